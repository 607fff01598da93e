"""Quote values for a systemd unit file, one setting's parser at a time (pure).

Paths and arguments in a capprobe unit come from the traced program, which may
be hostile: a file named ``x\\nExecStartPre=/bin/sh -c evil`` must come out as
one escaped value or not at all, never as a second directive.

systemd has no single quoting rule.  Every setting has its own parser in
src/core/load-fragment.c, and they differ in whether quotes are removed,
whether C escapes (``\\n``, ``\\xNN``) are understood, which prefixes carry
meaning and what the result must look like.  This module writes each value the
way *that* parser reads it back, byte for byte, and answers ``None`` when the
parser cannot produce the value at all; the caller then widens or drops the
rule and says so.

Rules that hold for every line (src/shared/conf-parser.c, systemd 252):

* ``config_parse`` reads with ``read_line``, which ends a line at ``\\n``,
  ``\\r``, ``\\r\\n`` or NUL: a raw line break can never appear in a value.
* A line whose unescaped last character is a backslash continues on the next
  line (the backslash becomes a space).  Every backslash we write is paired
  with the character it escapes, so no rendered value ends a line that way.
* ``parse_line`` drops any line that is not valid UTF-8 ("String is not UTF-8
  clean, ignoring assignment") and the unit then fails to load.  Raw bytes
  that are not UTF-8 can therefore only travel inside an escape.
* ``parse_line`` strips whitespace around the value: leading or trailing
  blanks only survive inside quotes.
* ``%`` starts a specifier (``unit_path_printf`` / ``unit_full_printf`` run
  *after* unquoting), so a literal percent sign is written ``%%``.
* An empty assignment (``ReadWritePaths=``) resets the whole list, so a line
  is never rendered without a value.

Vocabulary words arrive as ``str`` (``CAP_NET_ADMIN``, ``strict``,
``tcp:8080``); trace data arrives as ``bytes``.  A ``str`` that could not be a
vocabulary word means a rule passed trace data as a word: that is a bug in the
rule and raises ``ValueError`` instead of being quoted.
"""

from __future__ import annotations

import re

__all__ = [
    "DEVICE_KEYS",
    "DIRECTORY_KEYS",
    "ENVIRONMENT_KEYS",
    "EXEC_KEYS",
    "PATH_LIST_KEYS",
    "SOCKET_BIND_KEYS",
    "USER_GROUP_KEYS",
    "WORKING_DIRECTORY_KEYS",
    "render_line",
    "render_value",
]

# config_parse_namespace_path_strv: EXTRACT_UNQUOTE words, "-"/"+" prefixes, absolute.
PATH_LIST_KEYS = frozenset({
    "ReadWritePaths", "ReadOnlyPaths", "InaccessiblePaths", "ExecPaths", "NoExecPaths",
})
# config_parse_exec_directories: UNQUOTE|RETAIN_ESCAPE, then "src[:dest]" with CUNESCAPE.
DIRECTORY_KEYS = frozenset({
    "RuntimeDirectory", "StateDirectory", "CacheDirectory", "LogsDirectory",
    "ConfigurationDirectory",
})
# config_parse_exec: UNQUOTE|CUNESCAPE words, prefixes on the first word, ";" separators.
EXEC_KEYS = frozenset({
    "ExecStart", "ExecStartPre", "ExecStartPost", "ExecCondition", "ExecReload",
    "ExecStop", "ExecStopPost",
})
# config_parse_device_allow: one UNQUOTE word (the node), then the raw rest ("rwm").
DEVICE_KEYS = frozenset({"DeviceAllow"})
# config_parse_environ: UNQUOTE|CUNESCAPE words, each NAME=VALUE.
ENVIRONMENT_KEYS = frozenset({"Environment"})
# config_parse_user_group_compat: the raw rvalue, valid_user_group_name().
USER_GROUP_KEYS = frozenset({"User", "Group"})
# config_parse_working_directory: the raw rvalue, no unquoting at all.
WORKING_DIRECTORY_KEYS = frozenset({"WorkingDirectory"})
# config_parse_cgroup_socket_bind: parse_socket_bind_item() on the whole rvalue.
SOCKET_BIND_KEYS = frozenset({"SocketBindAllow", "SocketBindDeny"})

# Settings whose parser reads the whole rvalue as one item: several values
# joined by spaces would be one wrong value, not a list.
_SINGLE_VALUE_KEYS = USER_GROUP_KEYS | WORKING_DIRECTORY_KEYS | SOCKET_BIND_KEYS

# PATH_MAX counts the trailing NUL; NAME_MAX bounds one component
# (path_is_valid / path_find_first_component in src/basic/path-util.c).
_PATH_MAX = 4096
_NAME_MAX = 255

_WORD_FORBIDDEN = set(" \t\n\r\v\f\"'\\%")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
# A strict subset of valid_user_group_name(VALID_USER_RELAX|VALID_USER_ALLOW_NUMERIC).
_USER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,30}\Z")
_NUMERIC_ID = re.compile(r"(0|[1-9][0-9]{0,9})\Z")
# parse_socket_bind_item: [ipv4:|ipv6:][tcp:|udp:](any|PORT|PORT-PORT), or "any".
_SOCKET_BIND = re.compile(r"(?:(?:ipv4|ipv6):)?(?:(?:tcp|udp):)?(?:any|[0-9]{1,5}(?:-[0-9]{1,5})?)\Z")
# cunescape_one() understands these single-letter escapes; \s is systemd's own.
_C_ESCAPES = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"}


# ---------------------------------------------------------------- public API

def render_value(key: str, value: str | bytes) -> str | None:
    """One value of setting ``key`` as it must appear in the unit file.

    ``None`` means systemd's parser for ``key`` cannot produce ``value``.
    For the Exec*= keys this renders one *argument*; the executable (first
    word) has its own rules and is handled by ``render_line``.
    """
    if isinstance(value, str):
        _check_vocabulary_word(key, value)
    elif not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"{key}=: value must be str (a word) or bytes (trace data), not {type(value).__name__}")
    else:
        value = bytes(value)

    if key in PATH_LIST_KEYS:
        if isinstance(value, str) and value.startswith("-/"):
            # A rule's own word: "-" is systemd's "ignore if missing" prefix, kept as such.
            rendered = _render_namespace_path(value[1:].encode())
            return None if rendered is None else "-" + rendered
        return _render_namespace_path(_as_bytes(value))
    if key in DIRECTORY_KEYS:
        return _render_exec_directory(_as_bytes(value))
    if key in EXEC_KEYS:
        return _render_exec_argument(_as_bytes(value), expand_env=True)
    if key in DEVICE_KEYS:
        return _render_device_value(value)
    if key in ENVIRONMENT_KEYS:
        return _render_environment_assignment(_as_bytes(value))
    if key in WORKING_DIRECTORY_KEYS:
        return _render_working_directory(_as_bytes(value))
    if key in USER_GROUP_KEYS:
        return _render_user_group(_as_bytes(value))
    if key in SOCKET_BIND_KEYS:
        return _render_word_matching(key, value, _SOCKET_BIND)
    return _render_plain_word(key, value)


def render_line(key: str, values: tuple) -> str | None:
    """``values`` rendered for ``key`` and joined by spaces (without ``key=``).

    ``None`` if any value is inexpressible: a partial list would silently
    grant or deny something else than the rule decided, so the caller decides.
    """
    values = tuple(values)
    if not values:
        # "Key=" with nothing after it resets the setting in systemd.
        raise ValueError(f"{key}=: no values; an empty assignment resets the setting")
    if key in _SINGLE_VALUE_KEYS and len(values) != 1:
        raise ValueError(f"{key}= takes exactly one value per line, got {len(values)}")
    if key in DEVICE_KEYS and len(values) not in (1, 2):
        raise ValueError(f"DeviceAllow= takes a device node and optionally an access word, got {len(values)} values")
    if key in EXEC_KEYS:
        return _render_exec_command(key, values)
    rendered = [render_value(key, v) for v in values]
    if any(r is None for r in rendered):
        return None
    if key in DEVICE_KEYS and len(rendered) == 2 and not _is_device_access(rendered[1]):
        raise ValueError(f"DeviceAllow=: second value must be an access word, got {values[1]!r}")
    return " ".join(rendered)


# ---------------------------------------------------------- vocabulary words

def _check_vocabulary_word(key: str, word: str) -> None:
    """Refuse a str that cannot be a fixed vocabulary word: it is trace data."""
    if not word:
        raise ValueError(f"{key}=: empty word")
    bad = sorted({c for c in word if c in _WORD_FORBIDDEN or not c.isprintable()})
    if bad:
        raise ValueError(f"{key}=: {word!r} is not a vocabulary word (contains {bad!r}); "
                         "pass trace data as bytes")


def _render_plain_word(key: str, value: str | bytes) -> str:
    # Plain settings (CapabilityBoundSet=, ProtectSystem=, ...) only ever get
    # words from capprobe's own tables, already checked above.
    if isinstance(value, bytes):
        raise ValueError(f"{key}= takes vocabulary words; got trace bytes {value!r}")
    return value


def _render_word_matching(key: str, value: str | bytes, pattern: re.Pattern) -> str | None:
    if isinstance(value, bytes):
        raise ValueError(f"{key}= takes vocabulary words; got trace bytes {value!r}")
    return value if pattern.match(value) else None


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


# ------------------------------------------------------------- path checks

def _decode_utf8(raw: bytes) -> str | None:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _is_canonical_absolute_path(path: str) -> bool:
    """True if systemd keeps ``path`` exactly as it is.

    path_simplify_and_warn(PATH_CHECK_ABSOLUTE) rejects relative paths and
    ".." components ("path is not normalized") and silently rewrites "//",
    "/./" and a trailing "/"; we want the stored value to be the traced one,
    so anything systemd would rewrite is refused too.
    """
    if not path.startswith("/") or "\0" in path:
        return False
    if path == "/":
        return True
    return _components_are_canonical(path[1:].split("/")) and len(path.encode()) < _PATH_MAX


def _is_canonical_relative_path(path: str) -> bool:
    if not path or path.startswith("/") or "\0" in path:
        return False
    return _components_are_canonical(path.split("/")) and len(path.encode()) < _PATH_MAX


def _components_are_canonical(parts: list[str]) -> bool:
    return all(p not in ("", ".", "..") and len(p.encode()) <= _NAME_MAX for p in parts)


def _is_control(ch: str) -> bool:
    """C0 controls and DEL: bytes that read_line splits on or that terminals act on."""
    return ord(ch) < 0x20 or ord(ch) == 0x7F


# ----------------------------------------------------- EXTRACT_UNQUOTE words

def _quote_unquote_word(text: str) -> str:
    """Write ``text`` so extract_first_word(EXTRACT_UNQUOTE) returns it.

    Without EXTRACT_CUNESCAPE a backslash makes the next character literal
    ("\\x41" reads back as "x41", measured with systemd 252), and quotes may
    open anywhere in a word.  Quotes and backslashes are therefore escaped;
    a word with blanks is wrapped in double quotes, because an escaped blank
    at the end of a line would be stripped by parse_line and leave a lone
    backslash, i.e. a line continuation.  "%" is doubled for unit_path_printf,
    which runs on the unquoted word.
    """
    text = text.replace("%", "%%")
    if " " in text:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return re.sub(r"""(["'\\])""", r"\\\1", text)


def _render_namespace_path(raw: bytes) -> str | None:
    # config_parse_namespace_path_strv strips a leading "-" (ignore ENOENT)
    # and then "+" (prefix with RootDirectory=) from the unquoted word and
    # requires the rest to be absolute.  A traced path that starts with "-" or
    # "+" is relative, hence refused; an absolute one starts with "/" so its
    # first character can never be taken for a prefix, however it is quoted.
    path = _decode_utf8(raw)
    if path is None or not _is_canonical_absolute_path(path):
        return None
    # No C escapes here: a newline, tab or other control character cannot be
    # written at all, and raw control bytes in a unit file are refused.
    if any(_is_control(c) or (c != " " and not c.isprintable()) for c in path):
        return None
    return _quote_unquote_word(path)


def _render_device_value(value: str | bytes) -> str | None:
    # config_parse_device_allow: extract_first_word(EXTRACT_UNQUOTE) for the
    # node, then the unparsed rest must be made of "rwm" only.
    if isinstance(value, str) and _is_device_access(value):
        return value
    node = _decode_utf8(_as_bytes(value))
    if node is None:
        return None
    if node.startswith(("block-", "char-")) and isinstance(value, str):
        return value  # a device class from capprobe's own table, e.g. char-pts
    # valid_device_node_path(): below /dev/ or /run/systemd/inaccessible/,
    # normalized ("Invalid device node path '/sys/x', ignoring." otherwise).
    if not node.startswith(("/dev/", "/run/systemd/inaccessible/")):
        return None
    return _render_namespace_path(node.encode())


def _is_device_access(word: str) -> bool:
    return bool(word) and set(word) <= set("rwm")


# --------------------------------------------- EXTRACT_UNQUOTE|CUNESCAPE words

def _cescape_char(ch: str) -> str:
    if ch in _C_ESCAPES:
        return _C_ESCAPES[ch]
    if _is_control(ch):
        return f"\\x{ord(ch):02x}"
    if ord(ch) <= 0xFFFF:
        return f"\\u{ord(ch):04x}"
    return f"\\U{ord(ch):08x}"


def _quote_cunescape_word(text: str, *, double_dollar: bool) -> str:
    """Write ``text`` so extract_first_word(EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE) returns it.

    C escapes carry what cannot appear raw: control characters (a newline is
    "\\n", never a line break) and non-printable code points ("\\u202e"), so
    the unit file stays readable and free of terminal or bidi tricks.  "%"
    is doubled because unit_path_printf runs on the *unescaped* word, so
    "\\x25" would still start a specifier.  With ``double_dollar`` each "$" is
    written "$$", which replace_env() turns back into one "$" when the
    command runs (ExecStart= expands $VAR and ${VAR} in arguments).
    """
    out = []
    for ch in text:
        if ch == "\\":
            out.append("\\\\")
        elif ch in "\"'":
            out.append("\\" + ch)
        elif ch == "%":
            out.append("%%")
        elif ch == "$" and double_dollar:
            out.append("$$")
        elif ch == " ":
            out.append(" ")  # protected by the surrounding quotes below
        elif _is_control(ch) or not ch.isprintable():
            out.append(_cescape_char(ch))
        else:
            out.append(ch)
    word = "".join(out)
    # An empty word or one with blanks needs quotes: "" is how an empty
    # argument is written, and blanks would otherwise split the word.
    if not word or " " in word:
        return f'"{word}"'
    return word


def _render_exec_argument(raw: bytes, *, expand_env: bool) -> str | None:
    # The parser accepts "\xff" and stores the raw byte in argv (measured:
    # systemd 252 verifies it silently), but ExecStart= is also exported on
    # D-Bus as strings, and sd-bus refuses strings that are not UTF-8, so a
    # unit with such an argument could not be inspected; refuse it instead.
    text = _decode_utf8(raw)
    if text is None or "\0" in text:
        return None
    if text == ";":
        # config_parse_exec: a lone unquoted ";" separates two commands; "\;"
        # is its documented spelling of a literal semicolon argument.
        return "\\;"
    return _quote_cunescape_word(text, double_dollar=expand_env)


def _render_exec_executable(raw: bytes) -> tuple[str, bool] | None:
    """The first word of an Exec*= line, and whether "$" in it forced ":" mode."""
    path = _decode_utf8(raw)
    if path is None or not _is_canonical_absolute_path(path) or path == "/":
        return None
    # config_parse_exec rejects executables that fail string_is_safe() (no
    # control characters, quotes or backslashes: "Executable name contains
    # special characters") and ones ending in "/".
    if any(_is_control(c) or c in "\"'\\" for c in path):
        return None
    # The executable path itself is never $-expanded, but argv[0] (a copy of
    # it) is.  Escaping "$" as "$$" would change the path, so instead use the
    # ":" prefix (EXEC_COMMAND_NO_ENV_EXPAND) and keep every "$" literal.
    no_env_expand = "$" in path
    # The first word starts with "/" (or ":/"), so none of the special
    # prefixes "-@:+!" that config_parse_exec strips can be misread.
    word = _quote_cunescape_word(path, double_dollar=False)
    return (":" + word if no_env_expand else word), no_env_expand


def _render_exec_command(key: str, argv: tuple) -> str | None:
    first = argv[0]
    prefix = ""
    if isinstance(first, str):
        _check_vocabulary_word(key, first)
        # A rule's own word may carry systemd 252's prefixes (config_parse_exec: "@-:+!"; "+" runs
        # the command with full privileges), kept as such; trace data never gets one.
        path = first.lstrip("@-:+!")
        prefix, first = first[:len(first) - len(path)], path.encode()
        if len(set(prefix)) != len(prefix) or ("+" in prefix and "!" in prefix):
            raise ValueError(f"{key}=: {prefix!r} is not a valid prefix")
    executable = _render_exec_executable(bytes(first))
    if executable is None:
        return None
    word, no_env_expand = executable
    if no_env_expand and ":" in prefix:
        word = word[1:]  # the ":" is already among the prefixes
    no_env_expand = no_env_expand or ":" in prefix
    words = [prefix + word]
    for arg in argv[1:]:
        if isinstance(arg, str):
            _check_vocabulary_word(key, arg)
        elif not isinstance(arg, (bytes, bytearray)):
            raise TypeError(f"{key}=: argument must be str or bytes, not {type(arg).__name__}")
        rendered = _render_exec_argument(_as_bytes(arg) if isinstance(arg, str) else bytes(arg),
                                         expand_env=not no_env_expand)
        if rendered is None:
            return None
        words.append(rendered)
    return " ".join(words)


def _render_environment_assignment(raw: bytes) -> str | None:
    # config_parse_environ: UNQUOTE|CUNESCAPE, then unit_env_printf ("%%" is one
    # "%"), then env_assignment_is_valid() (name rules, UTF-8 value); "$" stays
    # literal here (only Exec*= arguments expand it).  systemd 252 would also
    # take a control character back from its C escape (measured: "\n" becomes
    # a newline), but such a value is refused: in the unit it is an escape a
    # reviewer reads past, and in the service's environment a line break
    # splits the NAME=value lines that `systemctl show`, EnvironmentFile= and
    # `env` dumps are read back as.  The caller leaves it out and says so.
    text = _decode_utf8(raw)
    if text is None or "=" not in text or any(_is_control(c) for c in text):
        return None
    name, _, _value = text.partition("=")
    if not _ENV_NAME.match(name):
        return None
    return _quote_cunescape_word(text, double_dollar=False)


# ------------------------------------------------- raw (unsplit) rvalues

def _render_working_directory(raw: bytes) -> str | None:
    # config_parse_working_directory takes the stripped rvalue as it is: no
    # unquoting and no C escapes, so quotes and backslashes are literal
    # (measured), and nothing can protect a blank at the end or a newline.
    path = _decode_utf8(raw)
    if path is None or not _is_canonical_absolute_path(path):
        return None
    if any(_is_control(c) or (c != " " and not c.isprintable()) for c in path):
        return None
    if path.endswith((" ", "\\")):
        # parse_line strips the blank; an odd trailing backslash would make
        # config_parse join the next line onto this one.
        return None
    return path.replace("%", "%%")


def _render_user_group(raw: bytes) -> str | None:
    # config_parse_user_group_compat: unit_full_printf + valid_user_group_name.
    name = _decode_utf8(raw)
    if name is None:
        return None
    if _NUMERIC_ID.match(name):
        uid = int(name)
        # 65535 and 4294967295 are the invalid 16/32-bit "-1" (uid_is_valid()).
        return name if uid < 4294967295 and uid != 65535 else None
    return name if _USER_NAME.match(name) else None


# --------------------------------------------------- *Directory= settings

def _render_exec_directory(raw: bytes) -> str | None:
    """A StateDirectory=-style name, relative to /var/lib etc.

    config_parse_exec_directories first splits words with EXTRACT_UNQUOTE|
    EXTRACT_RETAIN_ESCAPE (backslashes kept, so "\\ " cannot protect a blank)
    and then splits each word at ":" into source and symlink destination with
    EXTRACT_CUNESCAPE.  Every special character is therefore written as a
    \\xNN escape, which passes the first stage untouched and is decoded by
    the second; a bare ":" would start a symlink destination.
    """
    name = _decode_utf8(raw)
    if name is None or not _is_canonical_relative_path(name):
        return None  # PATH_CHECK_RELATIVE: "path is absolute" / "not normalized"
    if name.split("/", 1)[0] == "private":
        return None  # "path can't be 'private'": systemd's own DynamicUser= tree
    out = []
    for ch in name:
        if ch == "%":
            out.append("%%")
        elif ch in " \"'\\:" or _is_control(ch):
            out.append(f"\\x{ord(ch):02x}")
        elif not ch.isprintable():
            out.append(_cescape_char(ch))
        else:
            out.append(ch)
    return "".join(out)
