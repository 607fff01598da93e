"""`capprobe report`: one self-contained HTML page, looked at in a real browser (headless Chromium)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import capprobe, needs_root, needs_strace

from capprobe.render.report import path_tree, setting_rows

BUSYBOX = "/bin/busybox"
HOSTILE = "x</script><b>y"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (.ci/run installs it)")
needs_busybox = pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="busybox-static not installed")


def chromium(*args: str, where: Path) -> subprocess.CompletedProcess:
    """Headless Chromium as root (--no-sandbox), a profile directory of its own, nothing fetched:
    the page is a file:// URL and background networking is off. Its whole process group is
    ended if it hangs."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={where / 'chromium-profile'}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def screenshot(page: Path, where: Path) -> bytes:
    shot = where / f"{page.stem}.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri(), where=where)
    assert shot.exists(), f"chromium wrote no screenshot of {page}"
    return shot.read_bytes()


@pytest.fixture
def hostile_profile(tmp_path):
    """A real run that writes a file whose path holds `</script><b>` (in a directory of /srv, not
    the shared /tmp)."""
    srv = Path(tempfile.mkdtemp(prefix="capprobe-report-", dir="/srv" if os.path.isdir("/srv") else None))
    try:
        out = tmp_path / "hostile.profile.json"
        target = srv / HOSTILE
        r = capprobe("run", "-q", "--no-unit", "-o", str(out), "--", BUSYBOX, "sh", "-c",
                     f"mkdir -p '{target.parent}' && echo hi > '{target}' && cat '{target}'")
        assert r.returncode == 0, r.stderr
        yield out
    finally:
        shutil.rmtree(srv, ignore_errors=True)


@needs_root
@needs_strace
@needs_busybox
@needs_chromium
def test_report_renders_in_chromium_with_a_hostile_path_escaped(tmp_path, hostile_profile):
    page = tmp_path / "report.html"
    r = capprobe("report", str(hostile_profile), "--html", str(page))
    assert r.returncode == 0, r.stderr
    html = page.read_text()
    # self-contained: nothing to fetch
    assert "http://" not in html and "https://" not in html and " src=" not in html
    # the template has no <b> element: one in the page would be the path's, unescaped
    assert "<b>" not in html and "script&gt;&lt;b&gt;y" in html
    for section in ("Exposure", "The unit, each line with its evidence", "Capabilities", "Written paths"):
        assert section in html

    dom = chromium("--dump-dom", page.as_uri(), where=tmp_path).stdout
    assert "script&gt;&lt;b&gt;y" in dom  # the browser read it as text
    assert "<b>" not in dom               # and made no element of it
    assert "<h2" in dom and "Written paths" in dom

    shot = screenshot(page, tmp_path)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n"
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    # a page of tables and a tree makes a far larger image than an empty one
    assert len(shot) > 10 * len(screenshot(blank, tmp_path)), len(shot)


@needs_root
@needs_strace
@needs_busybox
def test_report_refuses_to_replace_a_file_and_bad_input_is_one_line(tmp_path, hostile_profile):
    page = tmp_path / "report.html"
    page.write_text("keep me")
    r = capprobe("report", str(hostile_profile), "--html", str(page))
    assert r.returncode != 0 and "exists" in r.stderr and page.read_text() == "keep me"
    assert capprobe("report", str(hostile_profile), "--html", str(page), "--force").returncode == 0
    assert page.read_text().startswith("<!DOCTYPE html>")
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    r = capprobe("report", str(bad), "--html", str(tmp_path / "x.html"))
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr


@needs_root
@needs_strace
@needs_busybox
def test_report_with_a_baseline_shows_what_the_new_version_needs_more(tmp_path):
    """A 'new version' that gives its file away needs CAP_CHOWN the baseline did not."""
    srv = Path(tempfile.mkdtemp(prefix="capprobe-report-", dir="/srv" if os.path.isdir("/srv") else None))
    try:
        profiles = {}
        for version, script in (("old", f"echo hi > {srv}/state"),
                                ("new", f"echo hi > {srv}/state && chown 1:1 {srv}/state")):
            profiles[version] = tmp_path / f"{version}.json"
            r = capprobe("run", "-q", "--no-unit", "-o", str(profiles[version]), "--", BUSYBOX, "sh", "-c", script)
            assert r.returncode == 0, r.stderr
    finally:
        shutil.rmtree(srv, ignore_errors=True)
    page = tmp_path / "report.html"
    r = capprobe("report", str(profiles["new"]), "--diff", str(profiles["old"]), "--html", str(page))
    assert r.returncode == 0, r.stderr
    html = page.read_text()
    changes = html[html.index('id="diff"'):html.index('id="exposure"')]
    assert re.search(r'<div class="warning">It needs \d+ thing\(s\) the baseline did not', changes)
    added = re.findall(r'<tr class="added">\s*<td class="mono">\+</td><td>(\w+)</td><td class="mono">([^<]*)</td>',
                       changes)
    assert ("capabilities", "CAP_CHOWN") in added
    assert ("syscalls", "chown") in added or ("syscalls", "fchownat") in added
    # and the reverse: the old version against the new needs nothing more
    r = capprobe("report", str(profiles["old"]), "--diff", str(profiles["new"]), "--html", str(page), "--force")
    html = page.read_text()
    assert "It needs nothing the baseline did not" in html
    assert re.search(r'<tr class="removed">\s*<td class="mono">-</td><td>capabilities</td>'
                     r'<td class="mono">CAP_CHOWN</td>', html)


def test_written_paths_become_a_tree_of_their_components():
    tree = path_tree([(b"/var/lib/app/state", ("write",), ("b64:L3Vzci9iaW4vYXBw",)),
                      (b"/var/lib/app/db", ("create", "rename_to"), ("/usr/bin/app",)),
                      (b"/run/app.pid", ("create",), ("/usr/bin/app",))])
    # directories the service did not write, with one entry each, join it
    assert [n.name for n in tree] == ["run", "var/lib/app"]
    assert [c.name for c in tree[0].children] == ["app.pid"]
    app = tree[1]
    assert app.ops == ()
    assert [(c.name, c.ops, c.by) for c in app.children] == [
        ("db", ("create", "rename_to"), ("app",)), ("state", ("write",), ("app",))]


def test_settings_that_improved_come_first_with_systemds_numbers():
    before = [{"name": "PrivateNetwork=", "description": "has access", "exposure": "0.5"},
              {"name": "UMask=", "description": "umask", "exposure": "0.1"}]
    after = [{"name": "UMask=", "description": "umask", "exposure": "0.1"},
             {"name": "PrivateNetwork=", "description": "no access", "exposure": None}]
    rows = setting_rows(before, after)
    assert [r.name for r in rows] == ["PrivateNetwork=", "UMask="]
    assert rows[0].improved and (rows[0].exposure_before, rows[0].exposure_after) == (0.5, None)
    assert not rows[1].improved
