"""Signed JSON calls from a node to its parent, outside the replication protocol.

Enrolment relays and handle-anywhere look-ups go up the tree through this client. It signs
each request with the node's key (when it has one), and when the parent refuses a
timestamp it adopts the parent's clock and signs once more.
"""

import json
import logging
import urllib.parse

import requests

from shared import errors, identity

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0


class ParentUnreachable(errors.PeerError):
    """The parent did not answer (network down, refused, timed out)."""


def node_base_url(url):
    """The node's root URL from a node URL or its ``/db`` URL (credentials dropped)."""
    parts = urllib.parse.urlsplit(url.rstrip("/"))
    path = parts.path
    if path.endswith("/db"):
        path = path[:-3]
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, path, "", ""))


class NodeClient:
    """JSON over HTTP to one node, signed by ``signer`` (an ``identity.RequestSigner``).

    :param base_url: the node's root URL (``http://host:port``).
    :param signer: signs requests; None sends them unsigned (enrolment of a new node).
    """

    def __init__(self, base_url, signer=None, *, timeout=DEFAULT_TIMEOUT):
        self.base_url = node_base_url(base_url)
        self.signer = signer
        self.timeout = timeout
        self.session = requests.Session()

    def post(self, path, body):
        """POST ``body`` as JSON to ``path``; returns the decoded answer.

        :raises ParentUnreachable: no answer.
        :raises PeerError: an error answer (``status`` and the node's reason kept).
        """
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        url = urllib.parse.urlsplit(self.base_url)._replace(path=path).geturl()
        path_qs = urllib.parse.urlsplit(url).path
        for attempt in (1, 2):
            headers = {"Content-Type": "application/json", "Accept": "application/json"}
            if self.signer is not None:
                headers.update(self.signer.headers("POST", path_qs, payload))
            try:
                response = self.session.post(url, data=payload, headers=headers,
                                             timeout=self.timeout)
            except requests.RequestException as exc:
                raise ParentUnreachable(f"{self.base_url} did not answer: {exc}",
                                        original=exc) from exc
            server_time = response.headers.get(identity.SERVER_TIME_HEADER)
            if response.status_code == 401 and server_time and self.signer and attempt == 1:
                self.signer.observe_server_time(float(server_time))
                continue
            break
        try:
            answer = response.json()
        except ValueError as exc:
            raise errors.PeerError(f"{url} answered {response.status_code} without JSON",
                                   status=response.status_code, original=exc) from exc
        if response.status_code >= 400:
            reason = answer.get("reason") if isinstance(answer, dict) else None
            raise errors.PeerError(reason or f"{url} answered {response.status_code}",
                                   status=response.status_code)
        return answer

    def close(self):
        """Drop pooled connections."""
        self.session.close()
