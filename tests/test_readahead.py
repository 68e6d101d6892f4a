"""The read-ahead window (fuse_client/readahead.py): stream detection, growth, budget."""

from mlustre.fuse_client.readahead import Readahead, Stream

K = 128 << 10  # a kernel read
C = 1 << 20  # a chunk


def reads(ra: Readahead, st: Stream, n: int, max_idx: int = 1000, start: int = 0) -> list[int]:
    out: list[int] = []
    for i in range(n):
        off = start + i * K
        out += ra.on_read(st, off, off + K, C, max_idx)
    return out


def test_first_read_reads_nothing_ahead() -> None:
    ra, st = Readahead(), Stream()
    assert ra.on_read(st, 0, K, C, 100) == []
    assert ra.inflight == 0


def test_sequential_reads_open_a_growing_window() -> None:
    ra, st = Readahead(max_window=16, max_inflight=1000), Stream()
    ra.on_read(st, 0, K, C, 100)
    assert ra.on_read(st, K, 2 * K, C, 100) == [1]  # window 1
    assert ra.on_read(st, 2 * K, 3 * K, C, 100) == [2]  # window 2: chunks 1-2
    assert ra.on_read(st, 3 * K, 4 * K, C, 100) == [3, 4]  # window 4
    assert ra.on_read(st, 4 * K, 5 * K, C, 100) == [5, 6, 7, 8]
    assert st.window == 8
    reads(ra, st, 20, start=5 * K)
    assert st.window == 16
    # Never more than the window ahead of the reader, never a chunk twice.
    last = (5 * K + 20 * K - 1) // C
    assert st.issued_to == last + 16


def test_each_chunk_is_asked_for_once() -> None:
    ra, st = Readahead(max_window=8, max_inflight=1000), Stream()
    got = reads(ra, st, 200)
    assert got == sorted(set(got))
    assert got[0] == 1 and got[-1] == (200 * K - 1) // C + 8


def test_random_reads_never_read_ahead() -> None:
    ra, st = Readahead(), Stream()
    offs = [5 * C, 17 * C + 3, 2 * C, 90 * C, 40 * C, 41 * C + K]
    for off in offs:
        assert ra.on_read(st, off, off + K, C, 1000) == []
    assert ra.inflight == 0


def test_a_seek_resets_the_window() -> None:
    ra, st = Readahead(max_inflight=1000), Stream()
    reads(ra, st, 10)
    assert st.window > 1
    assert ra.on_read(st, 50 * C, 50 * C + K, C, 1000) == []
    assert st.window == 0
    assert ra.on_read(st, 50 * C + K, 50 * C + 2 * K, C, 1000) == [51]


def test_window_stops_at_the_end_of_the_file() -> None:
    ra, st = Readahead(max_inflight=1000), Stream()
    got = reads(ra, st, 40, max_idx=3)
    assert got == [1, 2, 3]


def test_budget_bounds_fetches_in_flight_over_all_streams() -> None:
    ra = Readahead(max_window=16, max_inflight=10)
    streams = [Stream() for _ in range(5)]
    total = 0
    for _ in range(30):
        for i, st in enumerate(streams):
            off = st.next_off if st.next_off >= 0 else i * 100 * C
            total += len(ra.on_read(st, off, off + K, C, 10_000))
    assert ra.inflight == total == 10
    # As fetches end, the budget comes back and the next reads take it up again.
    for _ in range(4):
        ra.done()
    st = streams[0]
    assert len(ra.on_read(st, st.next_off, st.next_off + K, C, 10_000)) == 4
    assert ra.inflight == 10


def test_chunks_refused_for_budget_are_asked_for_later() -> None:
    ra, st = Readahead(max_window=4, max_inflight=1), Stream()
    got = reads(ra, st, 3)
    assert got == [1]
    ra.done()
    got = reads(ra, st, 1, start=3 * K)
    assert got == [2]  # the edge had not moved past chunk 2


def test_mount_device_found_in_mountinfo() -> None:
    from mlustre.fuse_client.kernel_readahead import mount_device

    info = (
        "22 1 0:21 / / rw - ext4 /dev/sda1 rw\n"
        "40 22 0:41 / /tmp/my\\040mnt rw,nosuid - fuse.mlustre spec rw\n"
        "41 22 0:42 / /tmp/other rw - fuse.mlustre spec rw\n"
    )
    assert mount_device(info, "/tmp/my mnt") == "0:41"
    assert mount_device(info, "/tmp/other") == "0:42"
    assert mount_device(info, "/tmp/none") is None
