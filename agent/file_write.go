package main

// PUT /api/v1/files: an upload written IN PLACE, and only once it arrived whole.
// Ported from emulator/agent/file_write.py (issues 9, 11); PROTOCOL.md, "Files".
//
//   - Identity. The target is opened and overwritten, never replaced by a rename: its inode, hard
//     links, mode, owner, and any bind mount over it (/etc/hosts, /etc/resolv.conf in a container) stay
//     as they were. A new file gets mode 0666 & ~umask and the default owner (TLE_DEFAULT_USER), and so
//     do the parent directories created for it.
//   - All or nothing. The body is first spooled into a NAMELESS file (O_TMPFILE: no directory entry,
//     nothing left behind whatever happens, a crash of the agent included) on the target's file system.
//     Only when the body ended at its announced end is it copied into the target (copy_file_range). A
//     body cut anywhere leaves the old file untouched. Growing a file first reserves the new blocks
//     (fallocate), so a full disk answers 413 NO_SPACE with the old content intact.
//
// A program running from the target (ETXTBSY) cannot have its file written in place; such a file is
// replaced atomically instead (mode and owner kept), which is what a package manager does.

import (
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"unsafe"
)

const (
	// what is still read of a body after a failed upload so that the connection can serve the next request
	ioDrainLeftover = 4 * 1024 * 1024
)

// ioUpload is one PUT: the checks before the body, the spool, and the commit into the target.
type ioUpload struct {
	path     string
	target   *os.File // the existing target, opened for writing before the body is read
	spool    *os.File
	size     int64
	busyText bool // the target is a running program's file: replace instead of writing
}

// prepare fails fast, before any body byte is read: a directory, a special file, a read-only or busy
// target.
func (u *ioUpload) prepare() error {
	var st syscall.Stat_t
	err := syscall.Stat(u.path, &st)
	switch {
	case err == nil:
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFDIR:
			return syscall.EISDIR
		case syscall.S_IFREG:
		default:
			return newHttpError(400, "NOT_A_FILE", "Not a regular file: "+u.path)
		}
		f, err := os.OpenFile(u.path, os.O_WRONLY|syscall.O_NOCTTY, 0)
		if errors.Is(err, syscall.ETXTBSY) {
			u.busyText = true
		} else if err != nil {
			return err
		} else {
			u.target = f
		}
	case errors.Is(err, syscall.ENOENT):
		// (a component that is a file already failed in stat with ENOTDIR)
		parent := ioNearestDir(u.path)
		if syscall.Access(parent, 2|1) != nil { // W_OK|X_OK
			var fs syscall.Statfs_t
			if syscall.Statfs(parent, &fs) == nil && fs.Flags&1 != 0 { // ST_RDONLY
				return syscall.EROFS
			}
			return syscall.EACCES
		}
	default:
		return err
	}
	spool, err := ioOpenSpool(u.path)
	if err != nil {
		return err
	}
	u.spool = spool
	return nil
}

// commit copies the complete body into the target.
func (u *ioUpload) commit() error {
	switch {
	case u.target != nil:
		fi, err := u.target.Stat()
		if err != nil {
			return err
		}
		if err := ioReserve(u.target, fi.Size(), u.size); err != nil {
			return err
		}
		if err := ioCopyInto(u.target, u.spool, u.size); err != nil {
			return err
		}
		if fi, err := u.target.Stat(); err == nil && fi.Size() > u.size {
			return u.target.Truncate(u.size)
		}
		return nil
	case u.busyText:
		return u.replace()
	}
	return u.create()
}

func (u *ioUpload) create() error {
	uid, gid, owned := defaultOwner()
	if err := ioMakeParents(u.path, uid, gid, owned); err != nil {
		return err
	}
	err := u.linkSpool(uid, gid, owned)
	if err == nil {
		return nil
	}
	var f *os.File
	if !errors.Is(err, syscall.EEXIST) {
		f, err = os.OpenFile(u.path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOCTTY, 0o666)
	}
	if errors.Is(err, syscall.EEXIST) {
		// created meanwhile, or a dangling symlink: write through it in place
		if u.target, err = os.OpenFile(u.path, os.O_WRONLY|os.O_CREATE|syscall.O_NOCTTY, 0o666); err != nil {
			return err
		}
		return u.commit()
	}
	if err != nil {
		return err
	}
	if owned && os.Geteuid() == 0 {
		_ = f.Chown(uid, gid)
	}
	if err := ioCopyInto(f, u.spool, u.size); err != nil {
		f.Close()
		_ = os.Remove(u.path)
		return err
	}
	return f.Close()
}

// linkSpool gives the nameless spool its name (linkat through /proc/self/fd): the new file appears
// whole, without copying its bytes again. Mode and owner are those of a created file. Fails (and
// nothing is changed) when the spool is not linkable there: another file system, no /proc, a named
// spool; EEXIST when the name was taken meanwhile.
func (u *ioUpload) linkSpool(uid, gid int, owned bool) error {
	fd := int(u.spool.Fd())
	if err := syscall.Fchmod(fd, 0o666&^ioUmask); err != nil {
		return err
	}
	if owned && os.Geteuid() == 0 {
		_ = syscall.Fchown(fd, uid, gid)
	}
	old, err := syscall.BytePtrFromString("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return err
	}
	name, err := syscall.BytePtrFromString(u.path)
	if err != nil {
		return err
	}
	atFdcwd, atSymlinkFollow := -100, 0x400
	_, _, e := syscall.Syscall6(syscall.SYS_LINKAT, uintptr(atFdcwd), uintptr(unsafe.Pointer(old)),
		uintptr(atFdcwd), uintptr(unsafe.Pointer(name)), uintptr(atSymlinkFollow), 0)
	if e != 0 {
		return e
	}
	return nil
}

// ioMakeParents creates the missing parents of `path`, owned by uid:gid when `owned`.
func ioMakeParents(path string, uid, gid int, owned bool) error {
	parent := filepath.Dir(path)
	var missing []string
	for d := parent; d != "/" && d != "."; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		}
		missing = append(missing, d)
	}
	if err := os.MkdirAll(parent, 0o777); err != nil {
		if errors.Is(err, syscall.EEXIST) {
			return syscall.ENOTDIR
		}
		return err
	}
	if owned {
		for _, d := range missing {
			_ = os.Chown(d, uid, gid)
		}
	}
	return nil
}

func (u *ioUpload) replace() error {
	target := ioRealPath(u.path)
	var st syscall.Stat_t
	if err := syscall.Stat(target, &st); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(target), ".tle-upload-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	err = ioCopyInto(f, u.spool, u.size)
	if err == nil {
		err = syscall.Fchmod(int(f.Fd()), st.Mode&0o7777)
	}
	if err == nil && os.Geteuid() == 0 {
		err = f.Chown(int(st.Uid), int(st.Gid))
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, target)
	}
	if err != nil {
		_ = os.Remove(tmp)
	}
	return err
}

func (u *ioUpload) close() {
	if u.target != nil {
		u.target.Close()
	}
	if u.spool != nil {
		u.spool.Close()
	}
	u.target, u.spool = nil, nil
}

// ioWriteFile answers PUT /api/v1/files: 204 once the body is written into the file (see above); a
// body cut before its announced end drops the connection and writes nothing.
func ioWriteFile(w http.ResponseWriter, r *http.Request, _ Params) {
	path, err := ioValidatePath(r)
	if err == nil && strings.HasSuffix(path, "/") {
		err = newHttpError(400, "IS_DIRECTORY", "Path is a directory, not a file: "+path)
	}
	if err != nil {
		writeError(w, err)
		return
	}
	up := &ioUpload{path: path}
	defer up.close()
	if err := up.prepare(); err != nil {
		writeError(w, ioFileError(err, path))
		return
	}
	if cut, err := ioSpoolBody(r, up); err != nil {
		if cut && ioMalformedBody(err) {
			w.Header().Set("Connection", "close") // the framing is lost: the connection cannot be reused
			writeError(w, newHttpError(400, "BAD_REQUEST", "malformed chunked request body"))
			return
		}
		if cut {
			ioAbort(w)
			return
		}
		_, _ = io.CopyN(io.Discard, r.Body, ioDrainLeftover) // so the connection can carry the next request
		writeError(w, ioFileError(err, path))
		return
	}
	release := ioLockTarget(ioRealPath(path))
	err = up.commit()
	release()
	if err != nil {
		writeError(w, ioFileError(err, path))
		return
	}
	w.WriteHeader(204)
}

// ioSpoolBody writes the whole request body into the upload's spool. -> (cut: the body ended before its
// announced end or was malformed, the error).
func ioSpoolBody(r *http.Request, up *ioUpload) (bool, error) {
	bufp := ioBufPool.Get().(*[]byte)
	defer ioBufPool.Put(bufp)
	buf := *bufp
	for {
		n, rerr := r.Body.Read(buf)
		if n > 0 {
			m, werr := up.spool.Write(buf[:n])
			up.size += int64(m)
			if werr != nil {
				return false, werr
			}
		}
		if rerr == io.EOF {
			return false, nil
		}
		if rerr != nil {
			return true, rerr
		}
	}
}

// ioMalformedBody tells a chunked body whose framing is wrong (net/http's chunked reader errors) from one
// that was cut (io.ErrUnexpectedEOF, or the connection's own error).
func ioMalformedBody(err error) bool {
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return false
	}
	msg := err.Error()
	return strings.Contains(msg, "chunk") || strings.Contains(msg, "header line too long")
}

// ioAbort ends the connection without an answer: the client's request was cut (or its framing lost),
// so there is nobody to answer, and the connection cannot carry another request.
func ioAbort(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			conn.Close()
			return
		}
	}
	panic(http.ErrAbortHandler)
}
