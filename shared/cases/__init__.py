"""Cases: materials, appointments and the workflow of a citizen's application."""
