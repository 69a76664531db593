package main

// Starting a process for a Spec, ported from emulator/agent/spawning.py and errors.spawn_failure: who it runs
// as, its environment and working directory, its pipes, and the shell-like message and exit code (127 not
// found, 126 not executable) of a failure. PTY sessions share launchSettings.

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// SpawnError is a process that could not be started, with the message and exit code a shell would give.
type SpawnError struct {
	Message  string
	ExitCode int
}

func (e *SpawnError) Error() string { return e.Message }

// agentEnvVars are the agent's own settings, removed from what children inherit.
var agentEnvVars = []string{"TLE_AGENT_SOCKET", "TLE_ENTRYPOINT", "TLE_ENTRYPOINT_GATE", "TLE_OUTPUT_LIMIT_BYTES",
	"TLE_MAX_FINISHED_PROCESSES", "TLE_DEFAULT_USER", treeMarker}

// baseEnv is the agent's environment without its own settings, in order.
func baseEnv() [][2]string {
	var out [][2]string
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		if !contains(agentEnvVars, k) {
			out = append(out, [2]string{k, v})
		}
	}
	return out
}

// resolvedUser is a user to run as: uid, gid, supplementary groups, and the passwd entry if there is one.
type resolvedUser struct {
	uid, gid uint32
	groups   []uint32
	pw       *user.User
}

// resolveUser resolves "name", "uid", "name:group", "uid:gid" or {"name"?, "uid"?, "gid"?}.
func resolveUser(u any) (*resolvedUser, error) {
	var name, group string
	var uid, gid int64 = -1, -1
	switch x := u.(type) {
	case string:
		us, g, _ := strings.Cut(x, ":")
		group = g
		if allDigits(us) {
			uid, _ = strconv.ParseInt(us, 10, 64)
		} else {
			name = us
		}
	case map[string]any:
		name, _ = x["name"].(string)
		if i, ok := isInt(x["uid"]); ok {
			uid = i
		}
		if i, ok := isInt(x["gid"]); ok {
			gid = i
		}
	}
	var pw *user.User
	if name != "" {
		p, err := user.Lookup(name)
		if err != nil {
			return nil, &SpawnError{fmt.Sprintf("unable to find user %s: no matching entries in passwd file", name), 126}
		}
		pw = p
		uid, _ = strconv.ParseInt(p.Uid, 10, 64)
	} else {
		if uid < 0 {
			return nil, &SpawnError{"user without a name or a uid", 126}
		}
		if p, err := user.LookupId(strconv.FormatInt(uid, 10)); err == nil {
			pw = p
		}
	}
	if group != "" {
		if allDigits(group) {
			gid, _ = strconv.ParseInt(group, 10, 64)
		} else {
			g, err := user.LookupGroup(group)
			if err != nil {
				return nil, &SpawnError{fmt.Sprintf("unable to find group %s: no matching entries in group file", group), 126}
			}
			gid, _ = strconv.ParseInt(g.Gid, 10, 64)
		}
	}
	if gid < 0 {
		gid = 0
		if pw != nil {
			gid, _ = strconv.ParseInt(pw.Gid, 10, 64)
		}
	}
	groups := []uint32{uint32(gid)}
	if pw != nil {
		if ids, err := pw.GroupIds(); err == nil {
			for _, s := range ids {
				if n, err := strconv.ParseUint(s, 10, 32); err == nil && uint32(n) != uint32(gid) {
					groups = append(groups, uint32(n))
				}
			}
		}
	}
	return &resolvedUser{uid: uint32(uid), gid: uint32(gid), groups: groups, pw: pw}, nil
}

// launch is what a new process gets: environment (KEY=VALUE), working directory, credentials (nil: the
// agent's own).
type launch struct {
	env  []string
	cwd  string
	cred *syscall.Credential
}

// launchSettings: the environment is the agent's, then envDefaults, then the user's HOME/USER/LOGNAME, then
// the spec's env (a nil value removes a variable); the user is the spec's, else TLE_DEFAULT_USER.
func launchSettings(spec *Spec, envDefaults map[string]string) (*launch, error) {
	env := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := env[k]; !ok {
			order = append(order, k)
		}
		env[k] = v
	}
	for _, kv := range table.baseEnv {
		set(kv[0], kv[1])
	}
	for k, v := range envDefaults {
		set(k, v)
	}
	l := &launch{cwd: spec.WorkingDir}
	u := spec.User
	if u == nil && table.defaultUser != "" {
		u = table.defaultUser
	}
	if u != nil {
		ru, err := resolveUser(u)
		if err != nil {
			return nil, err
		}
		if ru.pw != nil {
			set("HOME", ru.pw.HomeDir)
			set("USER", ru.pw.Username)
			set("LOGNAME", ru.pw.Username)
		}
		if !(int(ru.uid) == os.Geteuid() && int(ru.gid) == os.Getegid()) {
			l.cred = &syscall.Credential{Uid: ru.uid, Gid: ru.gid, Groups: ru.groups}
		}
	}
	for k, v := range spec.Env {
		if v == nil {
			delete(env, k)
		} else {
			set(k, *v)
		}
	}
	for _, k := range order {
		if v, ok := env[k]; ok {
			l.env = append(l.env, k+"="+v)
		}
	}
	if l.cwd != "" {
		st, err := os.Stat(l.cwd)
		if err != nil || !st.IsDir() {
			why := "No such file or directory"
			if _, lerr := os.Stat(l.cwd); lerr == nil {
				why = "Not a directory"
			}
			return nil, &SpawnError{fmt.Sprintf("sh: cd: %s: %s", l.cwd, why), 127}
		}
	}
	return l, nil
}

// envValue is the value of key in a KEY=VALUE list.
func envValue(env []string, key string) (string, bool) {
	for _, kv := range env {
		if k, v, _ := strings.Cut(kv, "="); k == key {
			return v, true
		}
	}
	return "", false
}

// findExecutable resolves a command as execvpe does with the child's PATH (default /bin:/usr/bin).
func findExecutable(command string, env []string, cwd string) (string, error) {
	if strings.Contains(command, "/") {
		return command, nil
	}
	path, ok := envValue(env, "PATH")
	if !ok {
		path = "/bin:/usr/bin"
	}
	var saved error
	for _, dir := range filepath.SplitList(path) {
		if dir == "" {
			dir = "."
		}
		cand := filepath.Join(dir, command)
		if !filepath.IsAbs(cand) && cwd != "" {
			cand = filepath.Join(cwd, cand)
		}
		st, err := os.Stat(cand)
		if err != nil {
			continue
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			if saved == nil {
				saved = syscall.EACCES
			}
			continue
		}
		return cand, nil
	}
	if saved != nil {
		return "", saved
	}
	return "", syscall.ENOENT
}

// spawnFailure is the shell-like SpawnError of an exec error.
func spawnFailure(err error, command string) *SpawnError {
	errno, _ := err.(syscall.Errno)
	switch errno {
	case syscall.ENOENT:
		if strings.Contains(command, "/") {
			return &SpawnError{fmt.Sprintf("sh: %s: No such file or directory", command), 127}
		}
		return &SpawnError{fmt.Sprintf("sh: %s: command not found", command), 127}
	case syscall.EACCES, syscall.EPERM:
		return &SpawnError{fmt.Sprintf("sh: %s: %s", command, strerror(errno)), 126}
	case syscall.ENOEXEC, syscall.EISDIR:
		return &SpawnError{fmt.Sprintf("sh: %s: %s", command, strerror(errno)), 126}
	}
	if errno != 0 {
		return &SpawnError{fmt.Sprintf("sh: %s: %s", command, strerror(errno)), 127}
	}
	return &SpawnError{fmt.Sprintf("sh: %s: %v", command, err), 127}
}

// strerror is the C library's message of an errno ("Permission denied"), capitalised as glibc writes it.
func strerror(e syscall.Errno) string {
	s := e.Error()
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

// pipes of a new process: parent ends (nil when not piped), and the child's three descriptors.
type childPipes struct {
	stdin          *os.File // parent's write end
	stdout, stderr *os.File // parent's read ends
	childFds       []uintptr
	toClose        []*os.File // child ends, closed in the parent after the start
}

func (p *childPipes) closeAll() {
	for _, f := range []*os.File{p.stdin, p.stdout, p.stderr} {
		if f != nil {
			f.Close()
		}
	}
	p.closeChildEnds()
}

func (p *childPipes) closeChildEnds() {
	for _, f := range p.toClose {
		f.Close()
	}
	p.toClose = nil
}

// makePipes opens the pipes the spec's stdin/stdout/stderr modes ask for (/dev/null otherwise).
func makePipes(spec *Spec) (*childPipes, error) {
	p := &childPipes{}
	devnull := func(flag int) (*os.File, error) { return os.OpenFile(os.DevNull, flag, 0) }
	if spec.StdinMode == "pipe" {
		r, w, err := os.Pipe()
		if err != nil {
			return nil, err
		}
		p.stdin = w
		p.toClose = append(p.toClose, r)
		p.childFds = append(p.childFds, r.Fd())
	} else {
		f, err := devnull(os.O_RDONLY)
		if err != nil {
			return nil, err
		}
		p.toClose = append(p.toClose, f)
		p.childFds = append(p.childFds, f.Fd())
	}
	for i, mode := range []string{spec.StdoutMode, spec.StderrMode} {
		if mode == "capture" {
			r, w, err := os.Pipe()
			if err != nil {
				p.closeAll()
				return nil, err
			}
			if i == 0 {
				p.stdout = r
			} else {
				p.stderr = r
			}
			p.toClose = append(p.toClose, w)
			p.childFds = append(p.childFds, w.Fd())
		} else {
			f, err := devnull(os.O_WRONLY)
			if err != nil {
				p.closeAll()
				return nil, err
			}
			p.toClose = append(p.toClose, f)
			p.childFds = append(p.childFds, f.Fd())
		}
	}
	return p, nil
}

// forkExec starts argv in its own session (setsid) with the launch settings and the given descriptors as
// 0, 1, 2; it returns the pid. Call it inside spawnChild's start function.
func forkExec(command string, args []string, l *launch, fds []uintptr, attr *syscall.SysProcAttr) (int, error) {
	if attr == nil {
		attr = &syscall.SysProcAttr{Setsid: true}
	}
	if l.cred != nil && !strings.Contains(command, "/") {
		return forkExecAsUser(command, args, l, fds, attr)
	}
	exe, err := findExecutable(command, l.env, l.cwd)
	if err != nil {
		return 0, spawnFailure(err, command)
	}
	attr.Credential = l.cred
	pid, err := syscall.ForkExec(exe, append([]string{command}, args...), &syscall.ProcAttr{
		Dir: l.cwd, Env: l.env, Files: fds, Sys: attr,
	})
	if err != nil {
		return 0, spawnFailure(err, command)
	}
	return pid, nil
}

// forkExecAsUser is forkExec for a process of another user, with the command looked up in PATH as
// execvpe does it in the child, i.e. as that user: a candidate the user may not execute (EACCES, say a
// root-only virtualenv first in PATH) is skipped for the next one; EACCES is reported only if no
// candidate ran (the root agent's own lookup would pick a file the user cannot run).
func forkExecAsUser(command string, args []string, l *launch, fds []uintptr, attr *syscall.SysProcAttr) (int, error) {
	path, ok := envValue(l.env, "PATH")
	if !ok {
		path = "/bin:/usr/bin"
	}
	attr.Credential = l.cred
	var saved error = syscall.ENOENT
	for _, dir := range strings.Split(path, ":") {
		if dir == "" {
			dir = "."
		}
		pid, err := syscall.ForkExec(dir+"/"+command, append([]string{command}, args...),
			&syscall.ProcAttr{Dir: l.cwd, Env: l.env, Files: fds, Sys: attr})
		if err == nil {
			return pid, nil
		}
		switch err {
		case syscall.EACCES:
			saved = err
		case syscall.ENOENT, syscall.ENOTDIR, syscall.ESTALE, syscall.ENODEV, syscall.ETIMEDOUT:
		default:
			return 0, spawnFailure(err, command)
		}
	}
	return 0, spawnFailure(saved, command)
}
