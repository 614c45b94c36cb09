"""Revision ids and revision trees with CouchDB semantics (pure functions, no I/O).

A document's revision tree is kept flat: a dict ``rev -> RevNode`` where each node
names its parent (``None`` for a root: the first revision, or the oldest one left
after stemming). A forest is therefore just several roots. The functions here follow
Apache CouchDB's ``couch_key_tree`` and ``couch_doc`` closely enough to give the same
answers in every scenario of the recorded vectors (tests/test_revs_vectors.py).
"""

import hashlib
import json
import re
from dataclasses import dataclass

REV_RE = re.compile(r"^([0-9]+)-([0-9A-Za-z]+)$")


class InvalidRev(ValueError):
    """A revision string that is not ``N-hash``."""


@dataclass
class RevNode:
    """One revision in a tree: its parent, whether it is a tombstone, whether a body is held."""

    parent: str | None
    deleted: bool = False
    available: bool = True

    def to_list(self):
        """Compact JSON form: ``[parent, deleted, available]``."""
        return [self.parent, int(self.deleted), int(self.available)]


def parse_rev(rev):
    """Split ``"N-hash"`` into ``(N, hash)``; raise InvalidRev on anything else."""
    if not isinstance(rev, str):
        raise InvalidRev(rev)
    match = REV_RE.match(rev)
    if not match:
        raise InvalidRev(rev)
    if len(match.group(1)) > 18:  # beyond SQLite's integers (and int()'s digit limit)
        raise InvalidRev(rev)
    pos = int(match.group(1))
    if pos < 1 and rev != "0-0":
        raise InvalidRev(rev)
    return pos, match.group(2)


def rev_pos(rev):
    """The generation of a rev string (no validation: the rev is known to be well formed)."""
    return int(rev.split("-", 1)[0])


def _hash_key(rev_hash):
    # CouchDB keeps a 32-hex-digit rev id as its 16 decoded bytes and any other as
    # raw bytes, and compares binaries; decoding keeps mixed-length ids ordered the same.
    if len(rev_hash) == 32:
        try:
            return bytes.fromhex(rev_hash)
        except ValueError:
            pass
    return rev_hash.encode()


def rev_key(rev):
    """Sort key of a rev (generation, then hash as CouchDB compares it)."""
    pos, rev_hash = rev.split("-", 1)
    return int(pos), _hash_key(rev_hash)


def make_rev(parent_rev, body, deleted):
    """Deterministic rev id for a new edit: generation + md5 of parent, deletion and content."""
    pos = rev_pos(parent_rev) + 1 if parent_rev else 1
    content = {k: v for k, v in body.items() if not k.startswith("_")}
    material = json.dumps(
        [parent_rev or "", bool(deleted), content],
        sort_keys=True, ensure_ascii=False, separators=(",", ":"),
    )
    return f"{pos}-{hashlib.md5(material.encode('utf-8')).hexdigest()}"


def tree_from_json(data):
    """Decode the stored compact form ``{rev: [parent, deleted, available]}``."""
    return {rev: RevNode(p, bool(d), bool(a)) for rev, (p, d, a) in data.items()}


def tree_to_json(tree):
    """Encode a tree into its compact stored form."""
    return {rev: node.to_list() for rev, node in tree.items()}


def leaves(tree):
    """Revs of the tree that have no children."""
    parents = {node.parent for node in tree.values()}
    return [rev for rev in tree if rev not in parents]


def sorted_leaves(tree):
    """Leaves in CouchDB's order: live before deleted, then generation, then hash, descending."""
    return sorted(leaves(tree), key=lambda r: (not tree[r].deleted, rev_key(r)), reverse=True)


def winner(tree):
    """The winning revision: a live leaf beats a deleted one, then higher generation, then hash."""
    return sorted_leaves(tree)[0]


def path_to_root(tree, rev):
    """Revs from ``rev`` back to its root, newest first."""
    path = []
    while rev is not None:
        path.append(rev)
        rev = tree[rev].parent
    return path


def revisions_of(tree, rev, limit=None):
    """The ``_revisions`` member for ``rev``: ``{"start": N, "ids": [hash, ...]}``."""
    path = path_to_root(tree, rev)
    if limit is not None:
        path = path[:limit]
    return {"start": rev_pos(rev), "ids": [r.split("-", 1)[1] for r in path]}


def path_from_revisions(rev, revisions):
    """Revs (newest first) named by a document's ``_rev`` and ``_revisions`` members.

    ``_revisions`` wins when both are given, as in CouchDB; a path that skips or
    repeats a generation cannot happen because positions are derived from ``start``.
    """
    if revisions is not None:
        if not isinstance(revisions, dict):
            raise InvalidRev("_revisions must be an object")
        start = revisions.get("start")
        ids = revisions.get("ids")
        if not isinstance(start, int) or isinstance(start, bool) or not isinstance(ids, list) \
                or not ids or start < len(ids):
            raise InvalidRev("_revisions is malformed")
        path = []
        for offset, rev_hash in enumerate(ids):
            if not isinstance(rev_hash, str) or not re.fullmatch(r"[0-9A-Za-z]+", rev_hash):
                raise InvalidRev("_revisions is malformed")
            path.append(f"{start - offset}-{rev_hash}")
        return path
    parse_rev(rev)
    return [rev]


def merge_path(tree, path, deleted, available=True):
    """Graft ``path`` (newest first) into ``tree`` in place.

    :returns: ``True`` when the tree gained a revision, ``False`` when every rev of
        the path was already known (the write is then a no-op, as in CouchDB).
    """
    changed = False
    parent = None
    for rev in reversed(path):
        node = tree.get(rev)
        if node is None:
            tree[rev] = RevNode(parent, False, False)
            changed = True
        elif node.parent is None and parent is not None:
            # The tree had been stemmed below this rev: the path brings older ancestors back.
            node.parent = parent
            changed = True
        parent = rev
    leaf = tree[path[0]]
    if changed or not leaf.available:
        if not leaf.available and available:
            changed = True
        leaf.deleted = bool(deleted)
        leaf.available = leaf.available or available
    return changed


def stem(tree, limit):
    """Drop revisions further than ``limit`` from every leaf below them (couch_key_tree:stem).

    A node survives when some leaf descending from it is at most ``limit - 1`` edges
    away; children of a dropped node become roots. Returns the dropped revs.
    """
    children = {}
    for rev, node in tree.items():
        if node.parent is not None:
            children.setdefault(node.parent, []).append(rev)
    distance = {}
    # Walk leaves upward: each node's distance is the minimum over its children's + 1.
    for leaf in (r for r in tree if r not in children):
        rev, dist = leaf, 0
        while rev is not None and distance.get(rev, dist + 1) > dist:
            distance[rev] = dist
            rev = tree[rev].parent
            dist += 1
    dropped = [rev for rev, dist in distance.items() if dist >= limit]
    for rev in dropped:
        del tree[rev]
    if dropped:
        gone = set(dropped)
        for node in tree.values():
            if node.parent in gone:
                node.parent = None
    return dropped


def find_missing(tree, revs):
    """Revs of ``revs`` not in the tree, as CouchDB's revs_diff answers.

    CouchDB removes one occurrence per known rev (Erlang's ``--``), so a rev asked
    twice is reported missing once; the answer is sorted.
    """
    missing = []
    seen_known = set()
    for rev in revs:
        if rev in tree and rev not in seen_known:
            seen_known.add(rev)
            continue
        missing.append(rev)
    return sorted(missing, key=rev_key)


def possible_ancestors(tree, missing):
    """Leaves of lower generation than some missing rev, in winner order (CouchDB's answer)."""
    if not missing:
        return []
    highest = max(rev_pos(r) for r in missing)
    return [leaf for leaf in sorted_leaves(tree) if rev_pos(leaf) < highest]
