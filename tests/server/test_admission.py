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
