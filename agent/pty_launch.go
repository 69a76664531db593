package main

// The start of a PTY session's program (pty_session.PtySession.start): the launch settings processes
// get (spawning.go: environment, working directory, user) with TERM=xterm-256color, its own process
// tree (process_tree.go), then the fork onto a new terminal through the central reaper.

import (
	"strings"
	"syscall"
)

// ioPtyLaunch starts the session's program on a new terminal of s.rows x s.cols. Errors: 400
// SPAWN_FAILED with the shell-like message of the failure.
func ioPtyLaunch(s *PtySession) error {
	spec := s.spec
	failed := func(err error) error {
		if se, ok := err.(*SpawnError); ok {
			return newHttpError(400, "SPAWN_FAILED", "failed to start "+spec.Command+": "+se.Message)
		}
		return err
	}
	// TERM: the client is a terminal emulator, whatever the image says
	l, err := launchSettings(spec, map[string]string{"TERM": "xterm-256color"})
	if err != nil {
		return failed(err)
	}
	token := newToken()
	env := make([]string, 0, len(l.env)+1)
	for _, kv := range l.env {
		if !strings.HasPrefix(kv, treeMarker+"=") {
			env = append(env, kv)
		}
	}
	l.env = append(env, treeMarker+"="+token) // its own process tree, ended whole by DELETE
	master, slave, err := ioOpenPty()
	if err != nil {
		return failed(spawnFailure(err, spec.Command))
	}
	defer syscall.Close(slave)
	_ = ioSetWinsize(uintptr(slave), s.rows, s.cols)
	if l.cred != nil {
		_ = syscall.Fchown(slave, int(l.cred.Uid), -1) // the terminal belongs to its user, as after a login
	}
	s.master = master
	fds := []uintptr{uintptr(slave), uintptr(slave), uintptr(slave)}
	// setsid, then the terminal (the child's fd 0) becomes its controlling tty
	attr := &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	mu.Lock()
	defer mu.Unlock()
	pid, err := spawnChild(func() (int, error) { return forkExec(spec.Command, spec.Args, l, fds, attr) }, s.onReaped)
	if err != nil {
		master.Close()
		return failed(err)
	}
	s.pid = pid
	tree := trees.register(token, pid)
	s.killTree = func(sig syscall.Signal) {
		mu.Lock()
		defer mu.Unlock()
		trees.signalTree(tree, sig) // however its members detached, also after the program itself exited
	}
	return nil
}
