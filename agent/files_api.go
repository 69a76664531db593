package main

// The /api/v1/files handlers: read, in-place write (file_write.go), delete and list, with the path
// rules of the real daemon. Ported from emulator/agent/file_api.py; PROTOCOL.md, "Files".

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"syscall"
)

// ioChunk is the size of one read or write of file data (bytes): large, so that 50 MB moves in few
// system calls, and pooled, so that an idle agent holds none of it.
const ioChunk = 1024 * 1024

var ioBufPool = sync.Pool{New: func() any { b := make([]byte, ioChunk); return &b }}

func init() {
	extraRoutes = append(extraRoutes,
		Route{Method: "GET", Pattern: "files", Handler: ioReadFile},
		Route{Method: "PUT", Pattern: "files", Handler: ioWriteFile},
		Route{Method: "DELETE", Pattern: "files", Handler: ioDeleteFile},
		Route{Method: "GET", Pattern: "files/list", Handler: ioListDir},
	)
}

// ioQueryParam is the first value of query parameter `name` (found=false when absent), decoded as
// Python's parse_qs does: '&' separates pairs (';' does not), '+' is a space, bytes are kept as sent.
func ioQueryParam(r *http.Request, name string) (value string, found bool) {
	for _, pair := range strings.Split(r.URL.RawQuery, "&") {
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		if key, err := url.QueryUnescape(k); err != nil || key != name {
			continue
		}
		val, err := url.QueryUnescape(v)
		if err != nil {
			val = strings.ReplaceAll(v, "+", " ") // a bad escape is kept literally, as parse_qs does
		}
		return val, true
	}
	return "", false
}

// ioValidatePath checks the `path` query parameter: present, no NUL, absolute, no ".." segment.
func ioValidatePath(r *http.Request) (string, error) {
	path, _ := ioQueryParam(r, "path")
	switch {
	case path == "":
		return "", newHttpError(400, "INVALID_PATH", "missing required query parameter `path`")
	case strings.ContainsRune(path, 0):
		return "", newHttpError(400, "INVALID_PATH", "path must not contain NUL bytes")
	case !strings.HasPrefix(path, "/"):
		return "", newHttpError(400, "INVALID_PATH", "path must be absolute: "+path)
	}
	for _, seg := range strings.Split(path, "/") {
		if seg == ".." {
			return "", newHttpError(403, "PATH_TRAVERSAL", "Path traversal detected: '..' is not allowed: "+path)
		}
	}
	return path, nil
}

// ioFileErrno maps errno to (HTTP status, code) for file calls: every condition a user can cause is a
// 4xx naming the path and the reason (issue 11); the rest stays 500 IO_ERROR (errors.py _FILE_ERRNO).
var ioFileErrno = map[syscall.Errno]struct {
	status int
	code   string
}{
	syscall.ENOENT: {404, "NOT_FOUND"}, syscall.EISDIR: {400, "IS_DIRECTORY"},
	syscall.ENOTDIR: {400, "NOT_A_DIRECTORY"}, syscall.EACCES: {403, "PERMISSION_DENIED"},
	syscall.EPERM: {403, "PERMISSION_DENIED"}, syscall.EROFS: {403, "READ_ONLY_FILESYSTEM"},
	syscall.ENOSPC: {413, "NO_SPACE"}, syscall.EDQUOT: {413, "NO_SPACE"},
	syscall.EFBIG: {413, "FILE_TOO_LARGE"}, syscall.EBUSY: {409, "BUSY"}, syscall.ETXTBSY: {409, "BUSY"},
	syscall.EEXIST: {409, "ALREADY_EXISTS"}, syscall.ENOTEMPTY: {409, "NOT_EMPTY"},
	syscall.EMLINK: {409, "TOO_MANY_LINKS"}, syscall.ENAMETOOLONG: {400, "NAME_TOO_LONG"},
	syscall.ELOOP: {400, "SYMLINK_LOOP"}, syscall.EINVAL: {400, "INVALID_ARGUMENT"},
	syscall.ENXIO: {400, "NOT_A_FILE"}, syscall.ENODEV: {400, "NOT_A_FILE"},
	syscall.EOPNOTSUPP: {400, "NOT_SUPPORTED"}, syscall.EXDEV: {400, "CROSS_DEVICE"},
	syscall.ESPIPE: {400, "NOT_SUPPORTED"},
}

var ioFileMessages = map[string]string{
	"NOT_FOUND":         "File not found",
	"IS_DIRECTORY":      "Path is a directory, not a file",
	"NOT_A_DIRECTORY":   "Not a directory (a component of the path is a file)",
	"PERMISSION_DENIED": "Permission denied",
}

// ioStrerror is the C library's text for an errno ("No space left on device"), as Python's strerror:
// Go's table holds the same words with a lower-case first letter.
func ioStrerror(e syscall.Errno) string {
	s := e.Error()
	if s != "" && s[0] >= 'a' && s[0] <= 'z' {
		s = string(s[0]-'a'+'A') + s[1:]
	}
	return s
}

// ioFileError is the answer to a failed file call on `path`: {"error": "<reason>: <path>", "code": ...}.
// An *HttpError passes through unchanged.
func ioFileError(err error, path string) error {
	var he *HttpError
	if errors.As(err, &he) {
		return he
	}
	var errno syscall.Errno
	if !errors.As(err, &errno) {
		return newHttpError(500, "IO_ERROR", err.Error()+": "+path)
	}
	m, ok := ioFileErrno[errno]
	if !ok {
		m.status, m.code = 500, "IO_ERROR"
	}
	reason := ioFileMessages[m.code]
	if reason == "" {
		reason = ioStrerror(errno)
	}
	return newHttpError(m.status, m.code, reason+": "+path)
}

// ioReadFile answers GET /api/v1/files: the file's bytes with its Content-Length when it is a regular
// file of known size (streamed in ioChunk pieces), else chunked until EOF (/proc-style files).
func ioReadFile(w http.ResponseWriter, r *http.Request, _ Params) {
	path, err := ioValidatePath(r)
	if err != nil {
		writeError(w, err)
		return
	}
	// O_NONBLOCK so that opening a FIFO cannot hang; cleared below for what is read
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC|syscall.O_NOCTTY|syscall.O_NONBLOCK, 0)
	if err != nil {
		writeError(w, ioFileError(err, path))
		return
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		syscall.Close(fd)
		writeError(w, ioFileError(err, path))
		return
	}
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFDIR:
		syscall.Close(fd)
		writeError(w, ioFileError(syscall.EISDIR, path))
		return
	case syscall.S_IFIFO, syscall.S_IFSOCK:
		syscall.Close(fd)
		writeError(w, newHttpError(400, "NOT_A_FILE", "Not a regular file (FIFO or socket): "+path))
		return
	}
	_ = syscall.SetNonblock(fd, false)
	f := os.NewFile(uintptr(fd), path)
	defer f.Close()
	w.Header().Set("Content-Type", "application/octet-stream")
	bufp := ioBufPool.Get().(*[]byte)
	defer ioBufPool.Put(bufp)
	if st.Mode&syscall.S_IFMT == syscall.S_IFREG && st.Size > 0 {
		// a file that shrinks meanwhile ends short: net/http then closes the connection, as the
		// promised length cannot be met; one that grows is sent up to its size at the open
		w.Header().Set("Content-Length", itoa64(st.Size))
		w.WriteHeader(200)
		_, _ = ioCopy(w, io.LimitReader(f, st.Size), *bufp)
		return
	}
	w.Header().Set("Transfer-Encoding", "chunked")
	w.WriteHeader(200)
	_, _ = ioCopy(w, f, *bufp)
}

// ioCopy copies src to dst through buf, one read then one write at a time (no ReaderFrom/WriterTo
// detours into small buffers). -> bytes written, the first error other than EOF.
func ioCopy(dst io.Writer, src io.Reader, buf []byte) (int64, error) {
	var n int64
	for {
		k, rerr := src.Read(buf)
		if k > 0 {
			m, werr := dst.Write(buf[:k])
			n += int64(m)
			if werr != nil {
				return n, werr
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}

func itoa64(v int64) string {
	if v == 0 {
		return "0"
	}
	var b [20]byte
	i := len(b)
	for v > 0 {
		i--
		b[i] = byte('0' + v%10)
		v /= 10
	}
	return string(b[i:])
}

// ioDeleteFile answers DELETE /api/v1/files: unlinks a file (a symlink itself, never a directory).
func ioDeleteFile(w http.ResponseWriter, r *http.Request, _ Params) {
	path, err := ioValidatePath(r)
	if err != nil {
		writeError(w, err)
		return
	}
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		writeError(w, ioFileError(err, path))
		return
	}
	if st.Mode&syscall.S_IFMT == syscall.S_IFDIR {
		writeError(w, ioFileError(syscall.EISDIR, path))
		return
	}
	if err := syscall.Unlink(path); err != nil {
		writeError(w, ioFileError(err, path))
		return
	}
	w.WriteHeader(204)
}

type ioDirEntry struct {
	Name       string `json:"name"`
	IsDir      bool   `json:"is_dir"`
	Size       *int64 `json:"size"`
	ModifiedAt int64  `json:"modified_at"`
}

// ioListDir answers GET /api/v1/files/list: {"path", "entries": [{name, is_dir, size (null for a
// directory), modified_at (ms)}]} sorted by name; a symlink is described by its target when it
// resolves, else by itself; an entry gone meanwhile is left out.
func ioListDir(w http.ResponseWriter, r *http.Request, _ Params) {
	path, err := ioValidatePath(r)
	if err != nil {
		writeError(w, err)
		return
	}
	notDir := newHttpError(400, "NOT_A_DIRECTORY", "Path is not a directory: "+path)
	var st syscall.Stat_t
	err = syscall.Stat(path, &st)
	if err == nil && st.Mode&syscall.S_IFMT != syscall.S_IFDIR {
		err = syscall.ENOTDIR
	}
	var names []string
	if err == nil {
		names, err = ioReadDirNames(path)
	}
	if errors.Is(err, syscall.ENOTDIR) {
		err = notDir
	}
	if err != nil {
		writeError(w, ioFileError(err, path))
		return
	}
	sort.Strings(names) // bytewise, as Python sorts code points: the same order for UTF-8 names
	entries := make([]ioDirEntry, 0, len(names))
	dir := strings.TrimSuffix(path, "/") + "/"
	for _, name := range names {
		var est syscall.Stat_t
		if syscall.Stat(dir+name, &est) != nil && syscall.Lstat(dir+name, &est) != nil {
			continue
		}
		e := ioDirEntry{Name: name, IsDir: est.Mode&syscall.S_IFMT == syscall.S_IFDIR,
			ModifiedAt: (est.Mtim.Sec*1_000_000_000 + est.Mtim.Nsec) / 1_000_000}
		if !e.IsDir {
			size := est.Size
			e.Size = &size
		}
		entries = append(entries, e)
	}
	writeJSON(w, 200, struct {
		Path    string       `json:"path"`
		Entries []ioDirEntry `json:"entries"`
	}{path, entries})
}

func ioReadDirNames(path string) ([]string, error) {
	d, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer d.Close()
	return d.Readdirnames(-1)
}
