"""The fast mode's bpftrace program: probes/kernel_facts.bt plus one probe pair per syscall
of probes/kernel_syscalls.toml, generated here from that table and from the kernel's own
tracepoint formats (the argument names), so the table stays data.

Each syscall's enter probe keeps its arguments per thread; its exit probe reads the strings
(a path is paged in by then: read at entry, an untouched page reads as ""), looks the call up
in that syscall's first-seen map (executable, error, the table's dedup arguments, the path)
and prints it only the first time. The record layout is kernel_records.py's.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..probes import load_table

MARKER = "// @@SYSCALL_PROBES@@"
ARGS_KEPT = 6
# nothing is kept or printed before the switch: strace sees that part, and a first-seen map
# filled then would hide the fact from the kernel side afterwards (capprobe's launcher, before
# its exec of the target, makes calls the target makes again)
FILTER = "/cgroup == $1 && @on/"
INO = "curtask->mm->exe_file->f_inode->i_ino"
NUMBER_KINDS = ("int", "u64p")  # printed in R records, in argument order; pointers are not
NETLINK_BYTES = 1024  # captured of a netlink message; a longer one is decoded from its start
GIDS_KEPT = 4  # of a setgroups list; a longer list is reported as not read whole
UNIX_PAYLOAD_BYTES = 256  # of a unix datagram: enough for the sd_notify words
ARGV_KEPT = 32
# the inode behind the fd, read at the exit from the task's fd table: what the kernel opened or
# ioctl'ed is a device or not, and which (never asked of /proc later: the target may dup2 by then)
FILE_OF_FD = {"open": "args->ret", "creat": "args->ret", "openat": "args->ret", "openat2": "args->ret",
              "ioctl": "$t.1"}


def tracepoint_fields(tracefs: Path, name: str) -> list[str] | None:
    """Argument names of syscalls:sys_enter_NAME, in order; None when this kernel lacks it."""
    try:
        text = (tracefs / "events/syscalls" / f"sys_enter_{name}" / "format").read_text()
    except OSError:
        return None
    fields = [line.split(";")[0].split()[-1].lstrip("*") for line in text.splitlines()
              if line.strip().startswith("field:")]
    return [f for f in fields if not f.startswith("common_") and f != "__syscall_nr"]


def _addr_words(ptr: str) -> list[str]:
    """bpftrace statements reading a sockaddr at PTR: $ap (0 when NULL), $head (family | port
    in network order << 16), $q1 $q2 $q3 (the 20 bytes after: an IPv4 address at the start
    of $q1, an IPv6 one from the middle of $q1, netlink groups, a packet protocol)."""
    return [f"$ap = (uint64){ptr};", "$head = (uint64)0; $q1 = (uint64)0; $q2 = (uint64)0; $q3 = (uint64)0;",
            "if ($ap != 0) {",
            "  $head = *(uint32*)uptr($ap); $q1 = *(uint64*)uptr($ap + 4); $q2 = *(uint64*)uptr($ap + 12);",
            "  $q3 = *(uint32*)uptr($ap + 20);",
            "}"]


def _print_addr(length: str = "0", unix: bool = True) -> list[str]:
    # a unix path (abstract: after its NUL, flag 1) on its own line: one string per printf; an
    # abstract name is not NUL-terminated: LENGTH (the sockaddr's, 0 unknown) says where it ends
    if not unix:  # an accept's peer: strace's decoder keeps TCP accepts only
        return ["if ($ap != 0) {",
                '  printf("N\\t%d\\t%lu\\t%lu\\t%lu\\t%lu\\n", tid, $head, $q1, $q2, $q3);',
                "}"]
    return ["if ($ap != 0) {",
            "  if (($head & 0xffff) == 1) {",
            "    $abs = *(uint8*)uptr($ap + 2) == 0 ? (uint64)1 : (uint64)0;",
            f'    printf("U\\t%d\\t%d\\t%d\\t%s\\n", tid, $abs, {length}, str(uptr($ap + 2 + $abs)));',
            "  } else {",
            '    printf("N\\t%d\\t%lu\\t%lu\\t%lu\\t%lu\\n", tid, $head, $q1, $q2, $q3);',
            "  }",
            "}"]


def _print_socket(fd: str, only_tcp: bool) -> list[str]:
    """The socket behind FD as the kernel has it (its fd may be closed by the time capprobe could
    look in /proc): family, type, protocol, its own address, inode. An accept's is printed for
    TCP over IPv4/IPv6 only, as strace's decoder keeps."""
    test = "$sk->sk_type == 1 && $sk->sk_protocol == 6" if only_tcp else "$sk != 0"
    return ["if (args->ret >= 0) {",
            f"  $file = *(curtask->files->fdt->fd + {fd});",
            "  $sk = ((struct socket *)$file->private_data)->sk;",
            f"  if ({test}) {{",
            "    $v6 = $sk->__sk_common.skc_v6_rcv_saddr.in6_u.u6_addr32;",
            '    printf("L\\t%d\\t%d\\t%d\\t%d\\t%d\\t%u\\t%u\\t%u\\t%u\\t%u\\t%llu\\n", tid, '
            "$sk->__sk_common.skc_family, $sk->sk_type, $sk->sk_protocol, $sk->__sk_common.skc_num, "
            "$sk->__sk_common.skc_rcv_saddr, $v6[0], $v6[1], $v6[2], $v6[3], $file->f_inode->i_ino);",
            "  }",
            "}"]


def _r_line(args_exprs: list[str], string: str) -> str:
    """The R record with the numbers among the arguments (pointers are not printed), then its
    first path on a line of its own: one string per printf, the BPF stack holds 512 bytes."""
    fmt = "R\\t%llu\\t%d\\t%d\\t%llu\\t%d\\t%lld" + "\\t%lld" * len(args_exprs) + "\\n"
    vals = "".join(", " + e for e in args_exprs)
    line = f'printf("{fmt}", $t.0, pid, tid, $ino, args->__syscall_nr, args->ret{vals});'
    return line if string == '""' else line + f' printf("1\\t%d\\t%s\\n", tid, {string});'


def _syscall_probes(name: str, spec: dict, fields: list[str]) -> tuple[str, list[str]]:
    """The enter/exit probe pair for one syscall, and the maps it owns."""
    kinds = spec["args"][:len(fields)]
    saved = ", ".join([f"(int64)args->{f}" for f in fields[:ARGS_KEPT]] + ["0"] * (ARGS_KEPT - min(len(fields), ARGS_KEPT)))
    sends = name in ("sendto", "sendmsg")
    keep = f"@a[tid] = ($now, {saved});"
    enter = [f"tracepoint:syscalls:sys_enter_{name} {FILTER} {{", "  $now = nsecs;", *([] if sends else ["  " + keep])]
    paths = [i for i, k in enumerate(kinds) if k == "path"]
    entry_work = name in entry_printing({name: spec})
    if name in ("execve", "execveat"):
        # the old image is gone at a successful exit: path and argv are read now
        p, argv = paths[0], kinds.index("ptr")
        enter += [f'  printf("E\\t%d\\t%llu\\t%s\\n", tid, $now, str(args->{fields[p]}));',
                  f"  $argv = (uint64)args->{fields[argv]}; $more = 1;",
                  f"  unroll({ARGV_KEPT}) {{",
                  "    if ($more) { $s = *(uint64*)uptr($argv); if ($s == 0) { $more = 0; } else {",
                  '      printf("A\\t%d\\t%s\\n", tid, str(uptr($s))); $argv = $argv + 8; } }',
                  "  }",
                  '  if ($more && *(uint64*)uptr($argv) != 0) { printf("a\\t%d\\n", tid); }  // argv cut here']
        paths = []
    if len(paths) > 1:
        # the second path at entry: two strings at the exit overflow the BPF stack
        enter.append(f'  printf("2\\t%d\\t%llu\\t%s\\n", tid, $now, str(args->{fields[paths[1]]}));')
    enter.append("}")
    if not entry_work:
        enter = []  # its arguments are kept by the one raw_syscalls:sys_enter probe (generic_enter)
    seen = f"@seen_{name}"
    # a send is kept only when printed at entry; any other call missing its entry began
    # before the program attached
    body = ["$t = @a[tid]; delete(@a[tid]);",
            "if ($t.0 != 0) {" if sends else "if ($t.0 == 0) { @unpaired = @unpaired + 1; } else {",
            f"  $ino = {INO};",
            "  $e = args->ret < 0 ? args->ret : 0;"]
    exprs = [f"$t.{i + 1}" for i in range(min(len(kinds), ARGS_KEPT))]
    for i, k in enumerate(kinds[:ARGS_KEPT]):
        if k == "u64p":
            body.append(f"  $u{i} = $t.{i + 1} != 0 ? *(uint64*)uptr($t.{i + 1}) : 0;")
            exprs[i] = f"$u{i}"
    printed = [e for e, k in zip(exprs, kinds) if k in NUMBER_KINDS]
    if "gids" in kinds:  # setgroups: the first GIDS_KEPT groups of the list
        at = kinds.index("gids") + 1
        printed += [f"($t.{at} != 0 ? *(uint32*)uptr($t.{at} + {4 * j}) : 0)" for j in range(GIDS_KEPT)]
    file_of_fd: list[str] = []
    if name in FILE_OF_FD:  # i_mode and i_rdev after the numbers (KernelDecoder._kernel_file reads them)
        fd = FILE_OF_FD[name]
        file_of_fd = ["  $fmode = (uint64)0; $frdev = (uint64)0;",
                      f"  if ({fd} >= 0) {{",
                      f"    $fi = (*(curtask->files->fdt->fd + {fd}))->f_inode;",
                      "    $fmode = (uint64)$fi->i_mode; $frdev = (uint64)$fi->i_rdev;",
                      "  }"]
        printed += ["$fmode", "$frdev"]
    string = f"str(uptr($t.{paths[0] + 1}))" if paths else '""'
    inner: list[str] = []
    addr = kinds.index("addr") if "addr" in kinds else None
    if sends:
        # read at entry, where the payload is paged in for sure: destination, first bytes
        # (sd_notify words), a netlink message whole; the exit prints the result (R)
        at_entry = [f"$sfp = @fam[pid, (int64)args->{fields[0]}];", "$sf = $sfp >> 16;"]
        if name == "sendto":
            at_entry += _addr_words(f"args->{fields[4]}")
            at_entry += [f"$base = (uint64)args->{fields[1]}; $len = (uint64)args->{fields[2]};"]
        else:
            at_entry += [f"$msg = (uint64)args->{fields[1]};"]
            at_entry += _addr_words("*(uint64*)uptr($msg)")
            at_entry += ["$iov = *(uint64*)uptr($msg + 16);",
                         "$base = $iov != 0 ? *(uint64*)uptr($iov) : 0; $len = $iov != 0 ? *(uint64*)uptr($iov + 8) : 0;"]
        # a socket opened before the program attached has no family here: its first send says so
        at_entry += ["$unknown = $sf == 0 && @unknown_fd[pid, (int64)args->%s] == 0;" % fields[0],
                     "if ($unknown) { @unknown_fd[pid, (int64)args->%s] = 1; }" % fields[0],
                     "if ($ap != 0 || $sf == 1 || $sf == 16 || $unknown) {",
                     "  " + keep,
                     '  printf("P\\t%d\\t%llu\\t%d\\t%llu\\t%d\\n", tid, $now, $sf, $len, $sfp & 0xffff);',
                     "  $keep = $sf == 16 ? (uint64)%d : (($sf == 1 || ($head & 0xffff) == 1) ? (uint64)%d : (uint64)0);"
                     % (NETLINK_BYTES, UNIX_PAYLOAD_BYTES),
                     "  if ($base != 0) {",
                     f"    $i = (uint64)0; unroll({NETLINK_BYTES // 64}) {{",
                     "      if ($i * 64 < $len && $i * 64 < $keep) {",
                     "        $b = $base + $i * 64;",
                     '        printf("W\\t%d\\t%d\\t%lx\\t%lx\\t%lx\\t%lx\\t%lx\\t%lx\\t%lx\\t%lx\\n", tid, $i, '
                     + ", ".join(f"*(uint64*)uptr($b + {8 * j})" for j in range(8)) + ");",
                     "      }",
                     "      $i = $i + 1;",
                     "    }",
                     "  }",
                     "}"]
        enter[-1:-1] = ["  " + line for line in at_entry]
        inner += [_r_line(printed, '""')]
        # the destination at the exit (the entry's stack is full): the memory is the caller's still
        if name == "sendto":
            inner += _addr_words("$t.5") + _print_addr("$t.6")
        else:
            inner += _addr_words("*(uint64*)uptr($t.2)") + _print_addr("*(uint32*)uptr($t.2 + 8)")
    else:
        if addr is not None:
            inner += _addr_words(f"$t.{addr + 1}")
        dedup = spec["dedup"]
        # an ioctl's device is part of what makes it new (fd 5 a file first, a tty later)
        keyed_by_file = name == "ioctl" and dedup != "always"
        inner += [line[2:] for line in file_of_fd] if keyed_by_file else []
        printing = [*([] if keyed_by_file else file_of_fd), "  " + _r_line(printed, string)]
        if addr is not None:  # bind, connect: the length is the next argument; accept's is a pointer
            printing += ["  " + line for line in _print_addr(f"$t.{addr + 2}", unix=kinds[addr + 1] == "int")]
        if name in ("accept", "accept4"):
            printing += ["  " + line for line in _print_socket("args->ret", only_tcp=True)]
        elif name in ("bind", "listen"):
            printing += ["  " + line for line in _print_socket("$t.1", only_tcp=False)]
        if dedup == "always":
            inner += [line[2:] for line in printing]
        else:
            key = ["$ino", "$e", *(exprs[i] for i in dedup if i != addr and i < len(exprs))]
            key += ["$frdev"] if keyed_by_file else []
            if addr is not None:
                # the peer of an accept without its ephemeral port; a bind or connect with it
                key += ["$head & 0xffff" if name in ("accept", "accept4") else "$head", "$q1", "$q2", "$q3"]
            if paths:
                key.append(string)
            k = ", ".join(key)
            inner += [f"if ({seen}[{k}] == 0) {{", f"  {seen}[{k}] = 1;", *printing, "}"]
        if name == "socket":
            # family and protocol of the new fd: a send on it says which (netlink: the protocol decodes it)
            inner.append("if (args->ret >= 0) { @fam[pid, args->ret] = ($t.1 << 16) | ($t.3 & 0xffff); }")
    body += ["  " + line for line in inner] + ["}"]
    exit_ = [f"tracepoint:syscalls:sys_exit_{name} {FILTER} {{", *("  " + b for b in body), "}"]
    return "\n".join(enter + exit_), ([seen] if not sends and spec["dedup"] != "always" else []), not entry_work


def generic_enter(numbers: list[int]) -> str:
    """One probe keeping the arguments of every call whose entry needs no work of its own: one
    program instead of sixty (bpftrace compiles each probe: ~0.3 s apiece on a loaded machine)."""
    # the id is read once (the verifier refuses a ctx pointer LLVM moved to re-read it)
    test = " || ".join(f"$id == {n}" for n in sorted(numbers))
    saved = ", ".join(f"(int64)args->args[{i}]" for i in range(ARGS_KEPT))
    return (f"tracepoint:raw_syscalls:sys_enter {FILTER} {{\n  $id = args->id;\n"
            f"  if ({test}) {{\n    @a[tid] = (nsecs, {saved});\n  }}\n}}")


def entry_printing(table: dict) -> set[str]:
    """The syscalls whose entry probe prints lines (second path, argv, payload) of its own."""
    return {name for name, spec in table.items()
            if name in ("sendto", "sendmsg", "execve", "execveat") or spec["args"].count("path") > 1}


def build_program(tracefs: Path, numbers: dict[str, int]) -> tuple[str, list[str]]:
    """(bpftrace program text, syscalls of the table this kernel lacks); NUMBERS: name -> syscall number."""
    template = resources.files("capprobe.probes").joinpath("kernel_facts.bt").read_text()
    table = load_table("kernel_syscalls")
    generic_numbers: list[int] = []
    blocks, maps, missing = [], ["@a", "@sc", "@sender", "@fam", "@unknown_fd", "@sigreturn", "@ping", "@on"], []
    for name, spec in table.items():
        fields = tracepoint_fields(tracefs, name)
        if fields is None:
            missing.append(name)
            continue
        if name not in numbers:
            missing.append(name)
            continue
        block, owned, generic = _syscall_probes(name, spec, fields)
        blocks.append(block)
        maps += owned
        if generic:
            generic_numbers.append(numbers[name])
    blocks.insert(0, generic_enter(generic_numbers))
    end = "END {\n" + "".join(f"  clear({m});\n" for m in maps) + \
        '  print(@calls);\n  printf("U\\t%d\\n", @unpaired);\n}\n'
    return template.replace(MARKER, "\n\n".join(blocks)) + "\n" + end, missing
