"""render.quoting: unit-file values that systemd reads back byte for byte.

The exact-text tests pin the per-parser rules; the property tests feed hostile
file names through the real systemd 252 parser (`systemd-analyze verify`, and
`systemd --test`, whose unit dump shows what the parser stored).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from capprobe.render.quoting import render_line, render_value

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SYSTEMD_BINARY = next((p for p in ("/lib/systemd/systemd", "/usr/lib/systemd/systemd") if os.path.exists(p)), None)
needs_systemd = pytest.mark.skipif(SYSTEMD_ANALYZE is None or SYSTEMD_BINARY is None,
                                   reason="systemd-analyze / systemd binary not installed")

INJECTION = b"x\nExecStartPre=/bin/sh -c evil"


# ------------------------------------------------------------ path lists

@pytest.mark.parametrize("key", ["ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths"])
def test_path_list_plain_path_is_unchanged(key):
    assert render_value(key, b"/var/lib/app") == "/var/lib/app"


@pytest.mark.parametrize("raw, text", [
    (b"/tmp/a b", '"/tmp/a b"'),                 # blank: quoted, not "\ " (parse_line strips a trailing one)
    (b"/tmp/50%", "/tmp/50%%"),                  # specifier
    (b'/tmp/a"b', '/tmp/a\\"b'),
    (b"/tmp/it's", "/tmp/it\\'s"),
    (b"/tmp/a\\", "/tmp/a\\\\"),                 # never a lone trailing backslash (line continuation)
    (b'/tmp/a "q" \\', '"/tmp/a \\"q\\" \\\\"'),
    (b"/tmp/-x", "/tmp/-x"),
    (b"/tmp/$HOME;", "/tmp/$HOME;"),             # no $ expansion, no ";" separator here
    ("/tmp/é".encode(), "/tmp/é"),
    (b"/", "/"),
])
def test_path_list_escapes(raw, text):
    assert render_value("ReadWritePaths", raw) == text


@pytest.mark.parametrize("raw", [
    b"/tmp/" + INJECTION,        # no C escapes in this parser: a newline cannot be written
    b"/tmp/a\rb", b"/tmp/a\tb", b"/tmp/\x1b[31m",
    b"/tmp/\xff",                # not UTF-8: the whole line would be dropped
    b"-/tmp/x", b"+/tmp/x",      # relative; would be read as the "-" / "+" prefixes
    b"relative", b"",
    b"/tmp/../etc", b"/tmp/./x", b"/tmp//x", b"/tmp/x/",  # rejected or rewritten by path_simplify_and_warn
    "/tmp/\u202eevil".encode(),  # bidi override: not printable, no escape exists here
    b"/" + b"a" * 256,           # component longer than NAME_MAX
])
def test_path_list_inexpressible(raw):
    assert render_value("ReadWritePaths", raw) is None


def test_path_list_line_and_partial_failure():
    assert render_line("ReadWritePaths", (b"/a", b"/b c")) == '/a "/b c"'
    assert render_line("ReadWritePaths", (b"/a", b"/b\nc")) is None
    with pytest.raises(ValueError):
        render_line("ReadWritePaths", ())


# ---------------------------------------------------------- *Directory=

@pytest.mark.parametrize("key", ["StateDirectory", "RuntimeDirectory", "CacheDirectory", "LogsDirectory", "ConfigurationDirectory"])
def test_directory_plain(key):
    assert render_value(key, b"myapp/sub") == "myapp/sub"


@pytest.mark.parametrize("raw, text", [
    (b"a b", "a\\x20b"),          # first stage keeps backslashes (RETAIN_ESCAPE): only \xNN works
    (b"a:b", "a\\x3ab"),          # a bare ":" would start a symlink destination
    (b"a%b", "a%%b"),
    (b"a\\b", "a\\x5cb"),
    (b"a\nb", "a\\x0ab"),
    (b"privateer", "privateer"),
])
def test_directory_escapes(raw, text):
    assert render_value("StateDirectory", raw) == text


@pytest.mark.parametrize("raw", [b"/var/lib/x", b"../x", b"a/../b", b"./a", b"a//b", b"a/", b"private", b"private/x", b"", b"\xff"])
def test_directory_inexpressible(raw):
    assert render_value("StateDirectory", raw) is None


# ---------------------------------------------------------- DeviceAllow

def test_device_allow_path_and_access():
    assert render_line("DeviceAllow", ("/dev/net/tun", "rw")) == "/dev/net/tun rw"
    assert render_line("DeviceAllow", (b"/dev/a b", "r")) == '"/dev/a b" r'
    assert render_line("DeviceAllow", ("char-pts", "rw")) == "char-pts rw"
    assert render_line("DeviceAllow", (b"/dev/null",)) == "/dev/null"


def test_device_allow_inexpressible_and_misuse():
    assert render_line("DeviceAllow", (b"/sys/x", "r")) is None       # valid_device_node_path
    assert render_line("DeviceAllow", (b"/dev/" + INJECTION, "r")) is None
    with pytest.raises(ValueError):
        render_line("DeviceAllow", ("/dev/net/tun", "rw", "m"))
    with pytest.raises(ValueError):
        render_line("DeviceAllow", ("/dev/net/tun rw",))             # two words passed as one
    with pytest.raises(ValueError):
        render_line("DeviceAllow", (b"/dev/null", "/dev/zero"))


# ------------------------------------------------------------- Exec*=

@pytest.mark.parametrize("key", ["ExecStart", "ExecStartPre", "ExecStop"])
def test_exec_plain(key):
    assert render_line(key, (b"/usr/bin/app", b"--port", "8080")) == "/usr/bin/app --port 8080"


@pytest.mark.parametrize("raw, text", [
    (INJECTION, '"x\\nExecStartPre=/bin/sh -c evil"'),   # the newline is an escape, never a line break
    (b"a b", '"a b"'),
    (b"", '""'),
    (b";", "\\;"),                    # a lone ";" separates commands
    (b";x", ";x"),
    (b"$HOME", "$$HOME"),             # replace_env(): "$$" is a literal "$"
    (b"${X}y$", "$${X}y$$"),
    (b"50%", "50%%"),
    (b'"q\'\\', "\\\"q\\'\\\\"),
    (b"\t\r\x01\x7f", "\\t\\r\\x01\\x7f"),
    (b"-@:+!x", "-@:+!x"),            # prefixes only matter on the first word
    ("é\u202e".encode(), "é\\u202e"),
])
def test_exec_argument_escapes(raw, text):
    assert render_value("ExecStart", raw) == text
    assert render_line("ExecStart", (b"/bin/true", raw)) == "/bin/true " + text


def test_exec_argument_not_utf8_is_inexpressible():
    # systemd 252 would store the byte from "\xff", but D-Bus strings must be UTF-8.
    assert render_value("ExecStart", b"a\xffb") is None
    assert render_line("ExecStart", (b"/bin/true", b"a\xffb")) is None


@pytest.mark.parametrize("raw, text", [
    (b"/opt/my app/bin", '"/opt/my app/bin"'),
    (b"/opt/100%/bin", "/opt/100%%/bin"),
    (b"/opt/-x", "/opt/-x"),
])
def test_exec_executable(raw, text):
    assert render_line("ExecStart", (raw,)) == text


def test_exec_executable_with_dollar_switches_off_env_expansion():
    # argv[0] would be $-expanded but the path not; ":" keeps both literal.
    assert render_line("ExecStart", (b"/opt/a$b", b"$HOME")) == ":/opt/a$b $HOME"


@pytest.mark.parametrize("raw", [
    b"-/bin/true", b"@/bin/true", b"true", b"", b"/", b"/bin/",
    b"/bin/a\\b", b'/bin/a"b', b"/bin/a\nb", b"/bin/a\tb", b"/bin/\xff", b"/bin/../true",
])
def test_exec_executable_inexpressible(raw):
    assert render_line("ExecStart", (raw, b"arg")) is None


# --------------------------------------------------------- Environment=

def test_environment():
    assert render_value("Environment", b"LANG=C") == "LANG=C"
    assert render_value("Environment", b"A=b c%$") == '"A=b c%%$"'
    assert render_line("Environment", (b"A=1", b"B=x y")) == 'A=1 "B=x y"'
    # a control character is left out (the caller says so), though systemd could take "\n" back
    for bad in (b"1A=x", b"noequals", b"A-B=x", b"A=\xff", b"A=b\nc", b"A=b\tc", b"A=\x1b[31m"):
        assert render_value("Environment", bad) is None


# ------------------------------------------------------ WorkingDirectory=

def test_working_directory_is_raw():
    assert render_value("WorkingDirectory", b"/srv/app") == "/srv/app"
    assert render_value("WorkingDirectory", b'/srv/a "b" c\\d') == '/srv/a "b" c\\d'  # no unquoting here
    assert render_value("WorkingDirectory", b"/srv/50%") == "/srv/50%%"
    for bad in (b"/srv/x ", b"/srv/x\\", b"/srv/" + INJECTION, b"srv", b"-/srv", b"~", b"/srv/\xff"):
        assert render_value("WorkingDirectory", bad) is None
    with pytest.raises(ValueError):
        render_line("WorkingDirectory", (b"/a", b"/b"))


# -------------------------------------------------------- User= / Group=

def test_user_group():
    assert render_line("User", ("daemon",)) == "daemon"
    assert render_line("Group", (b"0",)) == "0"
    assert render_value("User", b"svc.app-1") == "svc.app-1"
    for bad in (b"", b"1abc", b"a b", b"a:b", b"65535", b"4294967295", b"x" * 40, b"\xff"):
        assert render_value("User", bad) is None
    with pytest.raises(ValueError):
        render_value("User", "bad user")


# ------------------------------------------------------- SocketBindAllow=

def test_socket_bind():
    assert render_line("SocketBindAllow", ("tcp:8080",)) == "tcp:8080"
    assert render_line("SocketBindAllow", ("ipv6:udp:5000-5010",)) == "ipv6:udp:5000-5010"
    assert render_value("SocketBindAllow", "sctp:1") is None
    with pytest.raises(ValueError):
        render_line("SocketBindAllow", ("tcp:80", "udp:53"))   # one rule per line
    with pytest.raises(ValueError):
        render_value("SocketBindAllow", b"tcp:80")


# ---------------------------------------------------------- plain words

def test_plain_words():
    assert render_line("CapabilityBoundingSet", ("CAP_NET_ADMIN", "CAP_NET_RAW")) == "CAP_NET_ADMIN CAP_NET_RAW"
    assert render_line("RestrictAddressFamilies", ("AF_INET", "AF_UNIX")) == "AF_INET AF_UNIX"
    assert render_line("SystemCallFilter", ("@system-service", "~@privileged")) == "@system-service ~@privileged"
    assert render_value("ProtectSystem", "strict") == "strict"
    assert render_value("NoNewPrivileges", "yes") == "yes"


@pytest.mark.parametrize("word", ["/dev/net/tun rw", "a\tb", "x\ny", 'a"b', "a'b", "a\\b", "50%", "", "\x1b", "\u202e"])
@pytest.mark.parametrize("key", ["CapabilityBoundingSet", "ReadWritePaths", "ExecStart", "DeviceAllow", "User"])
def test_str_that_is_not_a_word_raises(key, word):
    with pytest.raises(ValueError):
        render_value(key, word)


def test_trace_bytes_on_a_vocabulary_key_raise():
    with pytest.raises(ValueError):
        render_value("CapabilityBoundingSet", b"CAP_SYS_ADMIN")


# ================================================= against the real systemd

def parse_unit_like_systemd(data: bytes) -> list[tuple[str | None, bytes, bytes]]:
    """(section, key, value) triples, following config_parse()/parse_line().

    read_line() ends a line at "\\n", "\\r", "\\r\\n" or NUL; comment lines are
    skipped; a line ending in an unescaped backslash continues on the next one
    with the backslash replaced by a blank; key and value are stripped.
    """
    lines = re.split(rb"\r\n|\n|\r|\0", data)
    out, section, continuation = [], None, None
    for buf in lines:
        if buf.lstrip(b" \t\n\r")[:1] in (b"#", b";"):
            continue
        p = (continuation or b"") + buf
        escaped = False
        for byte in p:
            escaped = (not escaped) and byte == 0x5C
        if escaped:
            continuation = p[:-1] + b" "
            continue
        continuation = None
        line = p.strip(b" \t\n\r")
        if not line:
            continue
        if line.startswith(b"["):
            section = line[1:-1].decode("utf-8", "replace")
            continue
        key, sep, value = line.partition(b"=")
        if sep:
            out.append((section, key.strip(b" \t\n\r"), value.strip(b" \t\n\r")))
    if continuation is not None:
        line = continuation.strip(b" \t\n\r")
        key, sep, value = line.partition(b"=")
        if sep:
            out.append((section, key.strip(), value.strip()))
    return out


@contextlib.contextmanager
def unit_file(body: str):
    """A unit file in a directory the unprivileged `systemd --test` can read."""
    d = tempfile.mkdtemp(prefix="capprobe-quoting-", dir="/tmp")
    try:
        os.chmod(d, 0o755)
        path = os.path.join(d, "t.service")
        with open(path, "w", encoding="utf-8") as f:
            f.write("[Unit]\nDescription=t\n[Service]\n" + body)
        os.chmod(path, 0o644)
        yield path
    finally:
        shutil.rmtree(d)


def systemd_verify(path: str) -> tuple[int, str]:
    r = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", path], capture_output=True, text=True,
                       errors="replace", timeout=60)
    return r.returncode, r.stdout + r.stderr


def systemd_dump_unit(path: str) -> list[bytes]:
    """The lines of `systemd --test`'s dump of t.service: what the parser stored.

    `systemd --test` refuses to run as root, so drop to nobody when needed.
    """
    env = dict(os.environ, SYSTEMD_UNIT_PATH=os.path.dirname(path) + ":", SYSTEMD_LOG_LEVEL="err")
    cmd = [SYSTEMD_BINARY, "--test", "--system", "--unit=t.service", "--no-pager"]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
    dump = subprocess.run(cmd, capture_output=True, env=env, timeout=60).stdout
    start = dump.index(b"-> Unit t.service:")
    end = dump.find(b"\n\t-> Unit ", start)
    return dump[start:end if end >= 0 else None].split(b"\n")


def dumped_field(lines: list[bytes], name: bytes) -> list[bytes]:
    prefix = b"\t\t" + name + b": "
    return [line[len(prefix):] for line in lines if line.startswith(prefix)]


def dumped_command_line(lines: list[bytes]) -> bytes:
    (command_line,) = [line[len(b"\t\t\tCommand Line: "):] for line in lines
                       if line.startswith(b"\t\t\tCommand Line: ")]
    return command_line


_OCTAL = re.compile(rb"[0-7]{3}")
_SIMPLE = {ord("a"): 7, ord("b"): 8, ord("f"): 12, ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("v"): 11}


def split_dumped_command_line(text: bytes) -> list[bytes]:
    """Undo quote_command_line(): bare words, or "..." with \\-escapes (\\NNN octal)."""
    words, i = [], 0
    while i < len(text):
        if text[i] == 0x20:
            i += 1
            continue
        word = bytearray()
        if text[i] == 0x22:
            i += 1
            while text[i] != 0x22:
                if text[i] == 0x5C:
                    nxt = text[i + 1]
                    if _OCTAL.match(text, i + 1):
                        word.append(int(text[i + 1:i + 4], 8))
                        i += 4
                        continue
                    word.append(_SIMPLE.get(nxt, nxt))
                    i += 2
                    continue
                word.append(text[i])
                i += 1
            i += 1
        else:
            while i < len(text) and text[i] != 0x20:
                word.append(text[i])
                i += 1
        words.append(bytes(word))
    return words


def expand_argv_like_systemd(argv: list[bytes]) -> list[bytes]:
    """What replace_env_argv() (src/basic/env-util.c, v252) makes of argv in an empty environment.

    A word that is "$NAME" (not "${" or "$$") is replaced by the split value
    of NAME: with NAME unset, by no word at all.  In any other word "${NAME}"
    is substituted (empty here), "${NAME:..." is left alone (no extended
    syntax without REPLACE_ENV_ALLOW_EXTENDED), "$$" becomes "$" and any other
    "$" stays.
    """
    out = []
    for word in argv:
        if word[:1] == b"$" and word[1:2] not in (b"{", b"$"):
            continue
        out.append(_replace_env_word(word))
    return out


def _replace_env_word(word: bytes) -> bytes:
    result, start, state, i = b"", 0, "WORD", 0
    while i < len(word):
        c = word[i:i + 1]
        if state == "WORD":
            if c == b"$":
                state = "CURLY"
        elif state == "CURLY":
            if c == b"{":
                result += word[start:i - 1]
                start, state = i - 1, "VARIABLE"
            elif c == b"$":
                result += word[start:i]
                start, state = i + 1, "WORD"
            else:
                state = "WORD"
        elif state == "VARIABLE":
            if c == b"}":
                start, state = i + 1, "WORD"  # unset variable: nothing appended
            elif c == b":":
                state = "WORD"
        i += 1
    return result + word[start:]


FRAGMENTS = [
    b"a", b"Z", b"0", b".", b"..", b"-", b"+", b"@", b"!", b":", b"=", b"#", b"~", b"/",
    b"%", b"%n", b"%%", b"$", b"$HOME", b"${PATH}", b"$$", b";", b" ", b"  ", b"\t", b"\n", b"\r",
    b'"', b"'", b"\\", b"\\n", b"\\x41", b"\\;", b"\xff", b"\xc3", "é".encode(), "\u202e".encode(),
    b"\x1b[31m", b"[Service]", b"\nExecStartPre=/bin/sh -c evil", b"\\\nExecStartPre=/bin/sh",
]
hostile_names = st.one_of(
    st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=8).map(b"".join),
    st.binary(min_size=1, max_size=16).filter(lambda b: b"\0" not in b),
)


def expect_path_expressible(path: bytes) -> bool:
    """Independent oracle: which absolute paths the path-list parser can carry exactly."""
    try:
        text = path.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if any(b < 0x20 or b == 0x7F for b in path):
        return False
    if any(not c.isprintable() and c != " " for c in text):
        return False
    parts = path.split(b"/")[1:]
    return path == b"/" or all(p not in (b"", b".", b"..") and len(p) <= 255 for p in parts)


def assert_single_directive(unit: bytes, key: bytes) -> None:
    keys = [k for section, k, _ in parse_unit_like_systemd(unit) if section == "Service"]
    assert keys.count(key) == 1, keys
    assert keys.count(b"ExecStart") == 1, keys
    assert b"ExecStartPre" not in keys, keys


SYSTEMD_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@needs_systemd
@SYSTEMD_SETTINGS
@given(name=hostile_names)
@example(name=INJECTION)
@example(name=b";")
@example(name=b"$HOME")
@example(name=b"${HOME}")
@example(name=b"%n")
@example(name=b"-x")
@example(name=b"a\\")
def test_hostile_name_in_read_write_paths_round_trips(name):
    path = b"/tmp/" + name
    rendered = render_value("ReadWritePaths", path)
    assert (rendered is not None) == expect_path_expressible(path), (path, rendered)
    if rendered is None:
        return
    assert "\n" not in rendered and "\r" not in rendered
    body = f"ExecStart=/bin/true\nReadWritePaths={rendered}\n"
    assert_single_directive(("[Service]\n" + body).encode(), b"ReadWritePaths")
    with unit_file(body) as unit:
        rc, out = systemd_verify(unit)
        stored = dumped_field(systemd_dump_unit(unit), b"ReadWritePaths")
    assert (rc, out) == (0, ""), (path, rendered, out)
    assert stored == [path]


@needs_systemd
@SYSTEMD_SETTINGS
@given(name=hostile_names)
@example(name=INJECTION)
@example(name=b";")
@example(name=b"$HOME")
@example(name=b"${HOME}")
@example(name=b"%n")
@example(name=b"-x")
@example(name=b"a\\")
def test_hostile_name_as_exec_argument_round_trips(name):
    rendered = render_line("ExecStart", (b"/bin/true", name))
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        assert rendered is None
        return
    assert rendered is not None and "\n" not in rendered and "\r" not in rendered
    body = f"ExecStart={rendered}\nReadWritePaths=/tmp\n"
    assert_single_directive(("[Service]\n" + body).encode(), b"ExecStart")
    with unit_file(body) as unit:
        rc, out = systemd_verify(unit)
        command_line = dumped_command_line(systemd_dump_unit(unit))
    assert (rc, out) == (0, ""), (name, rendered, out)
    argv = split_dumped_command_line(command_line)
    # The dump shows argv before $-expansion, which happens when the command runs.
    assert expand_argv_like_systemd(argv) == [b"/bin/true", name], (rendered, command_line, argv)


@needs_systemd
@SYSTEMD_SETTINGS
@given(name=hostile_names)
@example(name=INJECTION)
@example(name=b";")
@example(name=b"$HOME")
@example(name=b"${HOME}")
@example(name=b"%n")
@example(name=b"-x")
@example(name=b"a\\")
def test_hostile_name_as_executable_is_stored_exactly(name):
    path = b"/opt/" + name
    rendered = render_line("ExecStart", (path, b"$X"))
    if rendered is None:
        return
    with unit_file(f"ExecStart={rendered}\n") as unit:
        rc, out = systemd_verify(unit)
        command_line = dumped_command_line(systemd_dump_unit(unit))
    # The program does not exist; that must be the only complaint.
    assert out.strip().endswith("is not executable: No such file or directory"), out
    assert out.count("\n") == 1, out
    argv = split_dumped_command_line(command_line)
    if rendered.startswith(":"):  # EXEC_COMMAND_NO_ENV_EXPAND: argv is used as stored
        assert argv == [path, b"$X"], (rendered, command_line)
    else:
        assert expand_argv_like_systemd(argv) == [path, b"$X"], (rendered, command_line)


@needs_systemd
@pytest.mark.parametrize("body, complaint", [
    ("ReadWritePaths=/tmp/a\\xffb\n", None),                       # no C escapes: stored as /tmp/axffb
    ("ReadWritePaths=/tmp/../x\n", "path is not normalized, ignoring"),
    ("StateDirectory=private/x\n", "path can't be 'private'"),
    ("DeviceAllow=/sys/x r\n", "Invalid device node path"),
    ("SocketBindAllow=tcp:80 udp:53\n", "Unable to parse SocketBindAllow= assignment"),
    ("Environment=1A=x\n", "Invalid environment assignment"),
])
def test_what_systemd_says_about_bad_values(body, complaint):
    """Pins the measured parser behaviour the module's rules rely on."""
    with unit_file("ExecStart=/bin/true\n" + body) as unit:
        rc, out = systemd_verify(unit)
    if complaint is None:
        assert out == ""
    else:
        assert complaint in out, out


@needs_systemd
def test_rendered_values_of_every_family_verify_cleanly():
    body = "".join(f"{key}={render_line(key, values)}\n" for key, values in [
        ("ExecStart", (b"/bin/true", INJECTION, b"$HOME", b";", b"")),
        ("ReadWritePaths", (b"/tmp/a b", b"/tmp/50%", b"/tmp/q\"'\\")),
        ("StateDirectory", (b"a b:c", b"x\\y")),
        ("DeviceAllow", (b"/dev/a b", "rw")),
        ("Environment", (b"A=b c\"d%$\\",)),
        ("WorkingDirectory", (b'/tmp/w "x" \\y',)),
        ("User", ("daemon",)),
        ("SocketBindAllow", ("tcp:8080",)),
        ("CapabilityBoundingSet", ("CAP_NET_ADMIN",)),
    ])
    with unit_file(body) as unit:
        assert systemd_verify(unit) == (0, "")
        dump = systemd_dump_unit(unit)
    assert dumped_field(dump, b"ReadWritePaths") == [b"/tmp/a b /tmp/50% /tmp/q\"'\\"]
    assert sorted(dumped_field(dump, b"StateDirectory")) == [b"a b:c", b"x\\y"]
    assert dumped_field(dump, b"DeviceAllow") == [b"/dev/a b rw"]
    assert dumped_field(dump, b"WorkingDirectory") == [b'/tmp/w "x" \\y']
    assert dumped_field(dump, b"User") == [b"daemon"]
    assert split_dumped_command_line(dumped_command_line(dump)) == [b"/bin/true", INJECTION, b"$$HOME", b";", b""]
