"""Exception hierarchy. Domain errors know nothing of HTTP; couch.py maps them to statuses."""

#: Exit code of a command that cannot start on this node directory as it is (sysexits'
#: EX_CONFIG): a bad setting, a damaged or too new store. ``tongban run`` and the systemd
#: unit do not restart it; every restart would fail the same.
EXIT_UNUSABLE = 78


class TongbanError(Exception):
    """Base of every error this project raises on purpose."""

    #: CouchDB's ``error`` word for this kind of failure (a protocol name, not an HTTP detail).
    error = "unknown_error"

    def __init__(self, reason="", *, original=None):
        super().__init__(reason)
        self.reason = reason
        self.original = original


class ConfigurationError(TongbanError):
    """A node's configuration is missing or invalid."""

    error = "configuration_error"


class BadRequest(TongbanError):
    """The request or document is malformed."""

    error = "bad_request"


class InvalidDocId(BadRequest):
    """A document id that is not allowed."""

    error = "illegal_docid"


class DocValidation(BadRequest):
    """A document with a member CouchDB does not allow."""

    error = "doc_validation"


class NotFound(TongbanError):
    """No such document, revision or resource."""

    error = "not_found"


class Conflict(TongbanError):
    """An update that does not extend a current leaf."""

    error = "conflict"

    def __init__(self, reason="Document update conflict.", **kwargs):
        super().__init__(reason, **kwargs)


class Forbidden(TongbanError):
    """The caller may not read or write this."""

    error = "forbidden"


#: Header of a 401 saying which kind of refusal it is, for a node that must tell a clock
#: off by more than the signature window from a key or an account the parent refuses.
REFUSAL_HEADER = "X-Tongban-Refusal"


class Unauthorized(TongbanError):
    """No valid credentials."""

    error = "unauthorized"
    #: The value of :data:`REFUSAL_HEADER` in the answer, when it says more than 401.
    refusal = None


class DocumentTooLarge(TongbanError):
    """A document over the node's configured size limit."""

    error = "document_too_large"


class PeerError(TongbanError):
    """A replication peer failed (unreachable, or answered with an error).

    ``kind``, when the raiser knows it, is what the failure is for people (a key of
    ``shared.syncstatus.ERROR_MESSAGES``: ``local``, ``clock_skew``, ``bad_answer``…);
    otherwise the status and the original exception tell.
    """

    error = "peer_error"

    def __init__(self, reason="", *, status=None, original=None, kind=None):
        super().__init__(reason, original=original)
        self.status = status
        self.kind = kind


class StorageFailed(TongbanError):
    """The disk refused a write (an I/O error): nothing of that write was stored."""

    error = "storage_failed"
    #: What a person at a page reads.
    message = ("磁盘读写出错，未能保存：本次提交的内容没有写入（已保存的数据不受影响）。"
               "请联系管理员检查磁盘。")


class InsufficientStorage(StorageFailed):
    """The disk (or the store's size limit) is full: nothing of that write was stored.

    CouchDB's word for it (3.4's disk monitor answers ``507 insufficient_storage``).
    """

    error = "insufficient_storage"
    message = ("磁盘已满，未能保存：本次提交的内容没有写入（已保存的数据不受影响）。"
               "请联系管理员清理磁盘空间后再试。")
