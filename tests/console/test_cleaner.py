from harness.console.clean import ConsoleCleaner


def clean_all(data: bytes, size: int) -> bytes:
    c = ConsoleCleaner()
    out = b"".join(c.feed(data[i:i + size]) for i in range(0, len(data), size))
    return out + c.flush()


def test_interleaved_printk_line_is_moved_out_of_a_prompt_at_every_split():
    raw = b"\r\nguest log[    2.345678] random: crng init done\r\nin: \nnext\n"
    for size in range(1, len(raw) + 1):
        assert clean_all(raw, size) == b"\nguest login: \n[    2.345678] random: crng init done\nnext\n", size


def test_moved_log_line_is_flushed_at_end_of_stream():
    assert clean_all(b"log[ 1.0] x\nin: ", 4) == b"login: \n[ 1.0] x\n"


def test_clear_screen_starts_a_line_so_the_first_printk_is_kept():
    raw = b"Probing EDD (edd=off to disable)... ok\x1bc\x1b[?7l\x1b[2J[    0.000000] Linux version 6.1\n"
    for size in (1, 5, 100):
        assert clean_all(raw, size) == b"Probing EDD (edd=off to disable)... ok\n[    0.000000] Linux version 6.1\n"


def test_printk_line_at_line_start_is_kept():
    raw = b"[    0.912345] Run /init as init process\r\n"
    assert clean_all(raw, 3) == b"[    0.912345] Run /init as init process\n"


def test_ansi_escapes_stripped_even_when_split():
    raw = b"\x1b[1;32mStarting\x1b[0m \x1b]0;title\x07busybox \x1b(Blogin:\x1b[K "
    for size in range(1, 8):
        assert clean_all(raw, size) == b"Starting busybox login: "


def test_brackets_that_are_not_printk_pass_through():
    raw = b"x [ OK ] Started\n[  OK  ] at start\nfoo [bar] baz\n"
    assert clean_all(raw, 2) == raw


def test_held_prefix_is_flushed_at_end_of_stream():
    assert clean_all(b"prompt [", 100) == b"prompt ["


def test_a_bare_carriage_return_starts_a_line_even_one_byte_at_a_time():
    """SeaBIOS's "... o", a screen reset, "k", then the kernel's "\\r[    0.000000] Linux version":
    the log lines after it are not interleaved into "k" (that held the whole boot log back until
    the end when QEMU's console arrived byte by byte)."""
    from harness.console.clean import ConsoleCleaner
    raw = (b"Probing EDD... o\x1bc\x1b[2Jk\r[    0.000000] Linux version 6.1\r\n"
           b"[    0.000001] Command line: console=ttyS0\r\n")
    cleaner = ConsoleCleaner()
    out = b"".join(cleaner.feed(raw[i:i + 1]) for i in range(len(raw)))
    assert out.endswith(b"Linux version 6.1\n[    0.000001] Command line: console=ttyS0\n")
    assert cleaner.flush() == b""


def test_a_log_line_after_a_prompt_that_never_ends_is_released_after_the_bound():
    from harness.console.clean import ConsoleCleaner
    c = ConsoleCleaner(hold_s=0.25)
    out = c.feed(b"debian login: [   55.280000] BUG: kernel NULL pointer dereference\n", now=10.0)
    assert out == b"debian login: "                     # held: the prompt line may still go on
    assert c.release_due(10.1) == b""
    assert c.release_due(10.3) == b"\n[   55.280000] BUG: kernel NULL pointer dereference\n"
    assert c.feed(b"[   55.280001] RIP: 0010:foo+0x1/0x2\n", now=10.4) == b"[   55.280001] RIP: 0010:foo+0x1/0x2\n"


def test_a_lone_carriage_return_at_the_end_of_a_read_is_not_released_as_text():
    from harness.console.clean import ConsoleCleaner
    c = ConsoleCleaner(hold_s=0.25)
    assert c.feed(b"login: \r", now=1.0) == b"login: "
    assert not c.holding() and c.release_due(5.0) == b""
    assert c.feed(b"\n[    1.0] next\n", now=5.1) == b"\n[    1.0] next\n"


def test_strip_escapes_keeps_lines_where_the_guest_printed_them():
    from harness.console.clean import strip_escapes
    raw = b"\x1b[1;31mred\x1b[0m login\x1b]0;title\x07: [    5.1] crng\n\x1b(Bok\x1b["
    assert strip_escapes(raw) == b"red login: [    5.1] crng\nok"
