import pytest

from server.admission import Admission, Overloaded


def test_fit_recovers_batch_cost_and_expected_wait_counts_batches():
    adm = Admission(max_wait_s=0.1, batch_size=64)
    for n in (1, 4, 16, 64, 2, 32, 8, 64):  # a batch of n takes 3 ms + 0.5 ms per image
        adm.observe_batch(n, 0.003 + 0.0005 * n)
    assert adm.per_batch == pytest.approx(0.003) and adm.per_image == pytest.approx(0.0005)
    adm.reserve(16)  # one batch: 3 + 8 ms, not 16 x (a batch of 1)
    assert adm.expected_wait() == pytest.approx(0.011)
    adm.check()
    adm.reserve(184)  # 200 images: 4 batches, 12 + 100 ms
    assert adm.expected_wait() == pytest.approx(0.112)
    with pytest.raises(Overloaded, match="would take 112 ms > bound of 100 ms"):
        adm.check()
    assert adm.retry_after_s() == 1
    adm.release(200)
    assert adm.outstanding == 0 and adm.expected_wait() == 0
    adm.check()


def test_unknown_rate_admits_and_one_batch_size_is_proportional():
    adm = Admission(max_wait_s=0.05, batch_size=64)
    adm.reserve(10_000)
    adm.check()  # nothing measured yet: admit
    for _ in range(5):
        adm.observe_batch(8, 0.008)
    assert adm.per_batch == 0 and adm.per_image == pytest.approx(0.001)
    with pytest.raises(Overloaded):
        adm.check()


def test_uploads_in_progress_are_bounded_apart_from_admitted_work():
    adm = Admission(max_wait_s=0.05, batch_size=64, max_uploads=2)
    adm.observe_batch(8, 0.008)
    adm.start_upload()
    adm.start_upload()
    assert adm.outstanding == 0  # a body on its way holds no share of the admitted work ...
    with pytest.raises(Overloaded, match="2 uploads in progress"):  # ... only an upload slot
        adm.check()
    adm.end_upload(1)  # complete: its image is admitted work now
    adm.end_upload(0)  # never completed (deadline, client gone): nothing to admit
    assert (adm.uploads, adm.outstanding) == (0, 1)
    adm.check()


def test_a_fresh_server_starts_from_its_warm_up_timings():
    """Before any request, admission knows what a batch costs (it admitted without limit before)."""
    from fastapi.testclient import TestClient

    from server.app import create_app
    from server.config import Settings

    from .conftest import MODELS

    app = create_app(Settings(model_repository=MODELS, intra_op_threads=1, decode_workers=1))
    with TestClient(app):
        adm = app.state.server.admission
        assert adm.per_image > 0
        adm.reserve(100_000)  # a backlog no bound admits
        with pytest.raises(Overloaded):
            adm.check()
        adm.release(100_000)


def test_parallel_batches_divide_the_expected_wait():
    """Two inference threads: batches measured while both run take twice as long each, and two
    run at once, so the wait for k images is the one-thread fit's over two."""
    one, two = Admission(max_wait_s=0.1, batch_size=8), Admission(max_wait_s=0.1, batch_size=8, parallel=2)
    for n in (1, 8, 4, 8):
        one.observe_batch(n, 0.002 + 0.001 * n)
        two.observe_batch(n, 2 * (0.002 + 0.001 * n))
    for adm in (one, two):
        adm.reserve(32)
    assert two.expected_wait() == pytest.approx(one.expected_wait()) == pytest.approx(4 * 0.002 + 32 * 0.001)
