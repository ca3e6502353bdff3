import os
import re
import stat
import subprocess
import sys

import pytest

from timer_file import PipeInUseError, UnsafePipeError
from timer_file._pipe import default_pipe_path, open_pipe, remove_pipe

#: Holds the pipe at ``argv[1]`` open for reading, as a live server does, until stdin closes.
READER = """
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY | os.O_NONBLOCK)
print("reading", flush=True)
sys.stdin.read()
"""

#: Tries to take the pipe at ``argv[1]`` once ``argv[2]`` exists; says how it went, then
#: keeps the pipe (if it got it) until stdin closes.
TAKER = """
import os, sys, time
from timer_file._pipe import PipeInUseError, open_pipe
print("ready", flush=True)
while not os.path.exists(sys.argv[2]):
    time.sleep(0.001)
try:
    reader, keepalive, st = open_pipe(sys.argv[1])
except PipeInUseError:
    print("refused", flush=True)
else:
    print("took", st.st_ino, flush=True)
sys.stdin.read()
"""


def _close(*fds: int) -> None:
    for fd in fds:
        os.close(fd)


class TestCreate:
    def test_new_pipe_is_private_fifo(self, pipe_path: str) -> None:
        old = os.umask(0)
        try:
            reader, keepalive, st = open_pipe(pipe_path)
        finally:
            os.umask(old)
        _close(reader, keepalive)
        mode = os.lstat(pipe_path).st_mode
        assert stat.S_ISFIFO(mode)
        assert stat.S_IMODE(mode) == 0o600
        assert st.st_uid == os.geteuid()

    def test_default_path_is_in_private_directory(self) -> None:
        path = default_pipe_path()
        try:
            directory = os.path.dirname(path)
            assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
            assert not os.path.exists(path)
        finally:
            os.rmdir(os.path.dirname(path))

    def test_stale_fifo_of_ours_is_replaced(self, pipe_path: str) -> None:
        os.mkfifo(pipe_path, 0o666)
        stale = os.open(pipe_path, os.O_PATH)  # pins the old inode number, reads nothing
        reader, keepalive, st = open_pipe(pipe_path)
        _close(reader, keepalive)
        assert st.st_ino != os.fstat(stale).st_ino
        os.close(stale)
        assert stat.S_IMODE(os.lstat(pipe_path).st_mode) == 0o600

    def test_fifo_with_a_live_reader_is_refused(self, pipe_path: str) -> None:
        os.mkfifo(pipe_path, 0o600)
        before = os.stat(pipe_path).st_ino
        with subprocess.Popen(
            [sys.executable, "-c", READER, pipe_path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as server:
            assert server.stdout is not None
            assert server.stdout.readline() == "reading\n"
            with pytest.raises(PipeInUseError, match=re.escape(repr(pipe_path))):
                open_pipe(pipe_path)
            assert os.stat(pipe_path).st_ino == before
            server.communicate()
        # Its reader gone, the pipe is stale: it may be replaced.
        reader, keepalive, _st = open_pipe(pipe_path)
        _close(reader, keepalive)

    def test_servers_starting_together_one_takes_the_pipe(
        self, pipe_path: str, tmp_path: object
    ) -> None:
        go = f"{tmp_path}/go"
        os.mkfifo(pipe_path, 0o600)  # stale: every taker may find it so at once
        takers = [
            subprocess.Popen(
                [sys.executable, "-c", TAKER, pipe_path, go],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        try:
            assert [t.stdout.readline() for t in takers if t.stdout] == ["ready\n"] * 4
            with open(go, "w"):
                pass
            answers = [t.stdout.readline().split() for t in takers if t.stdout is not None]
        finally:
            for taker in takers:
                taker.communicate()
        took = [answer for answer in answers if answer[0] == "took"]
        assert len(took) == 1, answers
        assert sorted(answer[0] for answer in answers) == ["refused"] * 3 + ["took"]

    def test_reader_sees_no_eof_without_clients(self, pipe_path: str) -> None:
        reader, keepalive, _ = open_pipe(pipe_path)
        try:
            with pytest.raises(BlockingIOError):
                os.read(reader, 10)
        finally:
            _close(reader, keepalive)


class TestRefuse:
    @pytest.mark.parametrize("target", ["fifo", "file", "missing"])
    def test_symlink(self, pipe_path: str, tmp_path: object, target: str) -> None:
        destination = f"{tmp_path}/target"
        if target == "fifo":
            os.mkfifo(destination, 0o600)
        elif target == "file":
            open(destination, "w").close()
        os.symlink(destination, pipe_path)
        with pytest.raises(UnsafePipeError, match="symbolic link"):
            open_pipe(pipe_path)
        assert os.path.islink(pipe_path)
        assert os.path.lexists(destination) == (target != "missing")
        if target == "file":
            assert stat.S_ISREG(os.stat(destination).st_mode)

    @pytest.mark.parametrize("kind", ["file", "directory"])
    def test_not_a_fifo(self, pipe_path: str, kind: str) -> None:
        if kind == "file":
            with open(pipe_path, "w") as file:
                file.write("keep me")
        else:
            os.mkdir(pipe_path)
        with pytest.raises(UnsafePipeError, match="not a named pipe"):
            open_pipe(pipe_path)
        if kind == "file":
            with open(pipe_path) as file:
                assert file.read() == "keep me"
        else:
            assert os.path.isdir(pipe_path)

    @pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make another user's pipe")
    def test_other_users_fifo(self, pipe_path: str) -> None:
        os.mkfifo(pipe_path, 0o600)
        os.chown(pipe_path, 65534, 65534)
        with pytest.raises(UnsafePipeError, match="belongs to uid 65534"):
            open_pipe(pipe_path)
        assert os.lstat(pipe_path).st_uid == 65534

    def test_unsafe_pipe_error_is_permission_error(self) -> None:
        assert issubclass(UnsafePipeError, PermissionError)


class TestRemove:
    def test_removes_own_pipe_and_private_directory(self) -> None:
        path = default_pipe_path()
        reader, keepalive, st = open_pipe(path)
        _close(reader, keepalive)
        remove_pipe(path, st, remove_dir=True)
        assert not os.path.exists(os.path.dirname(path))

    def test_leaves_a_pipe_that_replaced_it(self, pipe_path: str) -> None:
        reader, keepalive, st = open_pipe(pipe_path)
        os.unlink(pipe_path)
        os.mkfifo(pipe_path)
        remove_pipe(pipe_path, st)
        _close(reader, keepalive)
        assert stat.S_ISFIFO(os.lstat(pipe_path).st_mode)

    def test_missing_path_is_fine(self, pipe_path: str) -> None:
        reader, keepalive, st = open_pipe(pipe_path)
        _close(reader, keepalive)
        os.unlink(pipe_path)
        remove_pipe(pipe_path, st)
        assert not os.path.lexists(pipe_path)
