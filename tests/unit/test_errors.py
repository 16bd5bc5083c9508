import grpc
import pytest

from tumorlens import errors as e


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (e.InvalidUIDError("x"), e.CANNOT_UNDERSTAND_INVALID_UID),
        (e.UndecodableDatasetError("x"), e.CANNOT_UNDERSTAND_UNDECODABLE),
        (e.InsufficientStorageError("x"), e.REFUSED_OUT_OF_RESOURCES),
        (e.SOPClassNotAcceptedError("x"), e.ERROR_DATA_SET_DOES_NOT_MATCH_SOP_CLASS),
        (e.JobStoreUnavailableError("x"), e.REFUSED_OUT_OF_RESOURCES),
        (RuntimeError("x"), e.PROCESSING_FAILURE),
    ],
)
def test_dimse_status(exc: Exception, status: int) -> None:
    assert e.dimse_status_for(exc) == status


def test_cannot_understand_statuses_are_in_the_standard_range() -> None:
    for exc in (e.InvalidUIDError(""), e.UndecodableDatasetError(""), e.UIDMismatchError("")):
        assert 0xC000 <= e.dimse_status_for(exc) <= 0xCFFF


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (e.StudyNotFoundError("x"), grpc.StatusCode.NOT_FOUND),
        (e.InvalidTransitionError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (e.JobStoreUnavailableError("x"), grpc.StatusCode.UNAVAILABLE),
        (e.InvalidUIDError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (e.InvalidRequestError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (e.ServerBusyError("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
        (e.ModelCardError("x"), grpc.StatusCode.INVALID_ARGUMENT),
        (e.WriterError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (e.NoUsableSeriesError("x"), grpc.StatusCode.FAILED_PRECONDITION),
        (ValueError("x"), grpc.StatusCode.INTERNAL),
    ],
)
def test_grpc_code(exc: Exception, code: grpc.StatusCode) -> None:
    assert e.grpc_code_for(exc) == code


def test_every_error_is_one_of_the_hierarchy() -> None:
    """Module-local error classes are defined here, so each maps in one place."""
    classes = [c for c in vars(e).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert all(issubclass(c, e.TumorlensError) for c in classes)
    assert issubclass(e.SliceImageError, e.InputDataError)
    assert str(e.SliceImageError("a.jpg", "cannot decode")) == "a.jpg: cannot decode"
