package main

// PTY sessions: a process on a pseudo-terminal as its controlling tty, and the one client attached to
// it over the frame protocol (0x00 data, 0x01 resize, 0x02 READY, 0x03 exit). Ported from
// emulator/agent/pty_session.py; PROTOCOL.md, "PTY".
//
// One goroutine per session (pump) reads the terminal, only while its output has somewhere to go:
// a READY client (whose socket's back-pressure then paces the reads), or the pending buffer below
// ptyBufferLimit. Output reaches clients in order: every write to a client happens under outMu.

import (
	"encoding/binary"
	"errors"
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
)

const (
	ptyOpData        = 0x00
	ptyOpResize      = 0x01
	ptyOpReady       = 0x02
	ptyOpExit        = 0x03
	ptyMessageMax    = 64 * 1024              // terminal bytes per DATA message
	ptyBufferLimit   = 1024 * 1024            // output held while no client is READY; past it the terminal is not read
	ptyFinalDrain    = 256 * 1024             // at most this much is still read once the program is gone
	ptyExitDrainWait = 250 * time.Millisecond // how long output is awaited after the exit (a background job may hold the terminal)
)

// PtySession is one program on a terminal and the client attached to it (a newer attach replaces an
// older one).
type PtySession struct {
	ID, Token  string
	spec       *Spec
	createdAt  int64 // ms since the epoch
	master     *os.File
	pid        int
	killTree   func(sig syscall.Signal) // the program's whole process tree
	onFinished func()

	outMu      sync.Mutex // held by every write of output or exit to a client, so that order is kept
	mu         sync.Mutex // guards everything below
	cond       *sync.Cond // on mu: the pump waits for room, a client, the exit
	rows, cols int
	pending    []byte // output no client has been sent yet
	client     *FrameStream
	ready      bool // the attached client sent READY
	eof        bool // the terminal read EOF/EIO: no process has it open any more
	reaped     bool
	finishing  bool // exit known (and output collected, or its grace over): the pump ends
	finished   bool // exited and every byte of output collected
	deleted    bool
	masterShut bool
	exitCode   *int
	endedAt    *int64
}

// PtyInfo is the JSON of a session (GET /api/v1/pty/{sid}, list, resize).
type PtyInfo struct {
	SessionID string   `json:"session_id"`
	Pid       int      `json:"pid"`
	Command   string   `json:"command"`
	Args      []string `json:"args"`
	Rows      int      `json:"rows"`
	Cols      int      `json:"cols"`
	Status    string   `json:"status"`
	ExitCode  *int     `json:"exit_code"`
	Connected bool     `json:"connected"`
	CreatedAt int64    `json:"created_at"`
	EndedAt   *int64   `json:"ended_at"`
}

func (s *PtySession) info() PtyInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	status := "running"
	if s.finished {
		status = "exited"
	}
	return PtyInfo{SessionID: s.ID, Pid: s.pid, Command: s.spec.Command, Args: s.spec.Args, Rows: s.rows,
		Cols: s.cols, Status: status, ExitCode: s.exitCode, Connected: s.client != nil,
		CreatedAt: s.createdAt, EndedAt: s.endedAt}
}

func (s *PtySession) isFinished() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.finished
}

// readable tells whether the pump may read the terminal now (mu held).
func (s *PtySession) readable() bool {
	return (s.client != nil && s.ready) || len(s.pending) < ptyBufferLimit
}

// pump reads the terminal until the session ends (see the file comment), then finishes it.
func (s *PtySession) pump() {
	buf := make([]byte, ptyMessageMax)
	for {
		s.mu.Lock()
		for !s.finishing && !s.deleted && !s.readable() {
			s.cond.Wait()
		}
		stop := s.finishing || s.deleted
		s.mu.Unlock()
		if stop {
			break
		}
		n, err := s.master.Read(buf)
		if n > 0 {
			s.deliver(buf[:n])
		}
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			// EIO: no process has the terminal open any more; the exit decides when it is finished
			s.mu.Lock()
			s.eof = true
			if s.reaped {
				s.finishing = true
			}
			for !s.finishing && !s.deleted {
				s.cond.Wait()
			}
			s.mu.Unlock()
			break
		}
	}
	s.finish()
}

// deliver sends terminal output to the READY client, or holds it.
func (s *PtySession) deliver(data []byte) {
	s.outMu.Lock()
	defer s.outMu.Unlock()
	s.mu.Lock()
	c := s.client
	if c == nil || !s.ready {
		c = nil
		if !s.deleted {
			s.pending = append(s.pending, data...)
		}
	}
	s.mu.Unlock()
	if c != nil {
		_ = c.Write(frameBinary, append([]byte{ptyOpData}, data...))
	}
}

func ioSendData(c *FrameStream, data []byte) {
	for len(data) > 0 {
		n := len(data)
		if n > ptyMessageMax {
			n = ptyMessageMax
		}
		_ = c.Write(frameBinary, append([]byte{ptyOpData}, data[:n]...))
		data = data[n:]
	}
}

// sendExit tells the client the exit code (0x03 + i32 big-endian, -1 if unknown) and closes its
// stream with 1000 "exit:<code>". outMu held.
func (s *PtySession) sendExit(c *FrameStream, code *int) {
	v := -1
	if code != nil {
		v = *code
	}
	msg := []byte{ptyOpExit, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(msg[1:], uint32(int32(v)))
	_ = c.Write(frameBinary, msg)
	c.Close(1000, "exit:"+strconv.Itoa(v))
}

// finish runs once on the pump when the session ended: the last output (at most ptyFinalDrain bytes
// already in the terminal), the terminal closed, the exit sent to a READY client.
func (s *PtySession) finish() {
	s.mu.Lock()
	deleted := s.deleted
	s.mu.Unlock()
	if deleted {
		s.closeMaster()
		return // the registry forgot it; the reaper still records its exit
	}
	_ = s.master.SetReadDeadline(time.Time{})
	if rc, err := s.master.SyscallConn(); err == nil {
		buf := make([]byte, ptyMessageMax)
		for budget := ptyFinalDrain; budget > 0; {
			n := 0
			if rc.Read(func(fd uintptr) bool { n, _ = syscall.Read(int(fd), buf); return true }) != nil || n <= 0 {
				break
			}
			budget -= n
			s.deliver(buf[:n])
		}
	}
	s.closeMaster()
	s.outMu.Lock()
	s.mu.Lock()
	s.finished = true
	c, code := s.client, s.exitCode
	if c != nil && s.ready {
		s.client, s.ready = nil, false
	} else {
		c = nil
	}
	s.mu.Unlock()
	if c != nil {
		s.sendExit(c, code)
	}
	s.outMu.Unlock()
	s.onFinished()
}

// closeMaster hangs up the terminal (what still runs on it gets SIGHUP); a read or write waiting on it
// returns.
func (s *PtySession) closeMaster() {
	s.mu.Lock()
	shut := s.masterShut
	s.masterShut = true
	s.mu.Unlock()
	if !shut {
		_ = s.master.Close()
	}
}

// onReaped is the reaper's report of the program's exit: a signal is reported as 128+signal, as a
// shell does. The output is awaited ptyExitDrainWait at most (a background job may keep the terminal).
func (s *PtySession) onReaped(ws syscall.WaitStatus) {
	code := ws.ExitStatus()
	if ws.Signaled() {
		code = 128 + int(ws.Signal())
	}
	ended := time.Now().UnixMilli()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reaped, s.exitCode, s.endedAt = true, &code, &ended
	if s.eof || s.deleted {
		s.stopPumpLocked()
		return
	}
	time.AfterFunc(ptyExitDrainWait, func() {
		s.mu.Lock()
		s.stopPumpLocked()
		s.mu.Unlock()
	})
}

// stopPumpLocked ends the pump's reading: it wakes from a wait or from a read (mu held).
func (s *PtySession) stopPumpLocked() {
	if s.finishing {
		return
	}
	s.finishing = true
	s.cond.Broadcast()
	if !s.masterShut {
		_ = s.master.SetReadDeadline(time.Now())
	}
}

// attach makes `c` the session's client; an older one is closed with 1008. Output waits for READY.
func (s *PtySession) attach(c *FrameStream) {
	s.mu.Lock()
	old := s.client
	s.client, s.ready = c, false
	s.cond.Broadcast()
	s.mu.Unlock()
	if old != nil {
		old.Close(1008, "another client attached to this PTY session")
	}
}

// detach forgets `c` if it is still the client (its connection ended).
func (s *PtySession) detach(c *FrameStream) {
	s.mu.Lock()
	if s.client == c {
		s.client, s.ready = nil, false
		s.cond.Broadcast()
	}
	s.mu.Unlock()
}

// onReady: the client is ready for output: what is pending first, then the exit if the session ended.
func (s *PtySession) onReady(c *FrameStream) {
	s.outMu.Lock()
	defer s.outMu.Unlock()
	s.mu.Lock()
	if s.client != c || s.ready {
		s.mu.Unlock()
		return
	}
	s.ready = true
	data := s.pending
	s.pending = nil
	fin, code := s.finished, s.exitCode
	if fin {
		s.client, s.ready = nil, false
	}
	s.cond.Broadcast()
	s.mu.Unlock()
	ioSendData(c, data)
	if fin {
		s.sendExit(c, code)
	}
}

// writeInput writes keystrokes into the terminal (waits while it does not take them); dropped once
// the terminal is gone.
func (s *PtySession) writeInput(data []byte) {
	_, _ = s.master.Write(data)
}

// resize sets the terminal size (ignored once the terminal is closed or out of 1..65535).
func (s *PtySession) resize(cols, rows int) {
	if cols <= 0 || cols > 65535 || rows <= 0 || rows > 65535 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.masterShut {
		return
	}
	s.rows, s.cols = rows, cols
	ioWinsizeOn(s.master, rows, cols)
}

// delete (DELETE): the attached client is told (1001), the process tree is killed, the terminal hung up.
func (s *PtySession) delete() {
	s.mu.Lock()
	s.deleted = true
	c := s.client
	s.client, s.ready, s.pending = nil, false, nil
	s.cond.Broadcast()
	s.mu.Unlock()
	if c != nil {
		c.Close(1001, "session terminated")
	}
	s.killTree(syscall.SIGKILL)
	s.closeMaster()
}
