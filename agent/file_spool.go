package main

// The pieces of an upload (file_write.go) that are not the HTTP side: the nameless spool, the copy of
// its bytes into the target, the reservation of space, the one-commit-at-a-time lock per target.
// Ported from emulator/agent/file_write.py.

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
)

// O_TMPFILE (__O_TMPFILE | O_DIRECTORY; the latter differs by architecture)
const oTmpfile = 0o20000000 | syscall.O_DIRECTORY

// ioUmask is the agent's umask, read once before anything runs (reading it means setting it: a child
// forked meanwhile would inherit the wrong one). New files get 0666 &^ ioUmask, as open(2) gives them.
var ioUmask = func() uint32 { m := syscall.Umask(0); syscall.Umask(m); return uint32(m) }()

var ioSpoolFallbackDirs = []string{"/tmp", "/var/tmp", "/dev/shm"}

// One commit at a time per target (by real path): two uploads of one file never interleave their bytes.
var ioCommitLocks = struct {
	sync.Mutex
	m map[string]*ioCommitLock
}{m: map[string]*ioCommitLock{}}

type ioCommitLock struct {
	sync.Mutex
	users int
}

// ioLockTarget takes the commit lock of `key`; -> its release.
func ioLockTarget(key string) func() {
	ioCommitLocks.Lock()
	l := ioCommitLocks.m[key]
	if l == nil {
		l = &ioCommitLock{}
		ioCommitLocks.m[key] = l
	}
	l.users++
	ioCommitLocks.Unlock()
	l.Lock()
	return func() {
		l.Unlock()
		ioCommitLocks.Lock()
		l.users--
		if l.users == 0 {
			delete(ioCommitLocks.m, key)
		}
		ioCommitLocks.Unlock()
	}
}

// ioRealPath is os.path.realpath: symlinks resolved where the path exists, else the path cleaned.
func ioRealPath(path string) string {
	if p, err := filepath.EvalSymlinks(path); err == nil {
		return p
	}
	if dir, err := filepath.EvalSymlinks(filepath.Dir(path)); err == nil {
		return filepath.Join(dir, filepath.Base(path))
	}
	return filepath.Clean(path)
}

func ioIsDir(path string) bool {
	var st syscall.Stat_t
	return syscall.Stat(path, &st) == nil && st.Mode&syscall.S_IFMT == syscall.S_IFDIR
}

// ioNearestDir is the deepest existing directory on the way to `path`.
func ioNearestDir(path string) string {
	d := filepath.Dir(path)
	for d != "/" && d != "." && !ioIsDir(d) {
		d = filepath.Dir(d)
	}
	if d == "." {
		return "/"
	}
	return d
}

// ioOpenSpool is a nameless read-write file for the body, on the target's file system when it can be
// (same space accounting), else in a temporary directory; closing it frees it.
func ioOpenSpool(target string) (*os.File, error) {
	first := ioNearestDir(target)
	dirs := append([]string{first}, ioSpoolFallbackDirs...)
	for _, d := range dirs {
		if f, err := os.OpenFile(d, oTmpfile|os.O_RDWR, 0o600); err == nil {
			return f, nil
		}
	}
	for _, d := range append(append([]string{}, ioSpoolFallbackDirs...), first) {
		f, err := os.CreateTemp(d, ".tle-upload-") // no O_TMPFILE there: a named file, unlinked at once
		if err != nil {
			continue
		}
		_ = os.Remove(f.Name())
		return f, nil
	}
	return nil, syscall.ENOSPC
}

// ioCopyInto copies the first `size` bytes of src over the start of dst: in the kernel
// (copy_file_range, which os.File.ReadFrom uses for a file source) where it can, else read and written
// sequentially from offset 0 (no pwrite, so /proc and /sys files can be written too).
func ioCopyInto(dst, src *os.File, size int64) error {
	if _, err := dst.Seek(0, io.SeekStart); err != nil && !errors.Is(err, syscall.ESPIPE) {
		return err
	}
	if _, err := src.Seek(0, io.SeekStart); err != nil {
		return err
	}
	n, err := dst.ReadFrom(io.LimitReader(src, size))
	if err != nil {
		return err
	}
	if n != size {
		return syscall.EIO // the spool shrank
	}
	return nil
}

// ioReserve reserves the blocks a grown file needs before any is written; a full disk then leaves the
// old content as it was. File systems without fallocate are written without the reservation.
func ioReserve(f *os.File, oldSize, newSize int64) error {
	if newSize <= oldSize || oldSize == 0 {
		return nil // an empty or /proc-style file has nothing to lose
	}
	err := syscall.Fallocate(int(f.Fd()), 0, oldSize, newSize-oldSize)
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) || errors.Is(err, syscall.EFBIG) {
		_ = f.Truncate(oldSize)
		return err
	}
	return nil // EOPNOTSUPP, EINVAL (special files), ...: nothing reserved, write anyway
}
