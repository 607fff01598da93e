"""A hostile target for `run --checkpoint` with the profile in a directory it can write.

capprobe writes each checkpoint to a temporary file beside the profile, then chmods and renames
it by name. In its own directory the target renames each such file away and puts a symlink to
a root-only file (argv[2]) in its place: a chmod by name changes that file. Refuses root and
capabilities. argv[1]: its directory; argv[3]: how many seconds it keeps trying.
"""
import os, sys, time
with open("/proc/self/status") as f:
    status = dict(line.split(":", 1) for line in f)
if os.geteuid() == 0 or int(status["CapEff"].strip(), 16):
    sys.exit("refusing to run with privilege")
d, victim, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
deadline, swapped = time.monotonic() + seconds, 0
while time.monotonic() < deadline:
    for name in os.listdir(d):
        if name.endswith(".tmp"):
            try:
                os.rename(os.path.join(d, name), os.path.join(d, "taken"))
                os.symlink(victim, os.path.join(d, name))
                swapped += 1
            except OSError:
                pass
print(f"swapped {swapped} temporary file(s)", file=sys.stderr)
