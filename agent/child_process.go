package main

// One OS process of a process-table entry (one incarnation), ported from emulator/agent/child_process.py and
// supervised.py: output pipes feeding the entry's buffer, the exit status the reaper reports, stdin, signals
// to the process group or the whole tree. A process counts as exited when it is reaped AND its pipes reached
// EOF, or 250 ms after the reaping when a background grandchild keeps the pipes open.

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

const (
	pipeRead        = 64 * 1024
	exitDrainGrace  = 250 * time.Millisecond
	managedStopWait = 10 * time.Second
)

// readOOMKills is the memory cgroup's oom_kill counter (v2 memory.events, v1 memory.oom_control), -1 if none.
func readOOMKills() int64 {
	for _, p := range []string{"/sys/fs/cgroup/memory.events", "/sys/fs/cgroup/memory/memory.oom_control"} {
		data, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n") {
			k, v, _ := strings.Cut(strings.TrimSpace(line), " ")
			if k == "oom_kill" {
				if n, err := strconv.ParseInt(v, 10, 64); err == nil {
					return n
				}
			}
		}
	}
	return -1
}

// Child is one incarnation. Fields are guarded by mu, except stdinMu which serialises stdin writers.
type Child struct {
	proc                *Proc
	pid                 int
	tree                *Tree
	startedAt           int64
	startMono           time.Time
	reaped, finished    bool
	endedAt             *int64
	exitCode, signal    *int
	oomKilled, timedOut bool
	killSent            bool
	done                chan struct{}
	partial             [2][]byte
	openFds             int
	stdin               *os.File
	stdinPipe           bool
	stdinMu             sync.Mutex
	timeoutTimer, grace *time.Timer
	escalate            *time.Timer
}

func (c *Child) status() string {
	switch {
	case !c.reaped:
		return "running"
	case c.oomKilled:
		return "oom_killed"
	case c.signal != nil:
		return "signaled"
	}
	return "exited"
}

func (c *Child) exitEvent() map[string]any {
	reason := "exited"
	switch {
	case c.timedOut:
		reason = "timed_out"
	case c.oomKilled:
		reason = "oom_killed"
	case c.signal != nil:
		reason = "signaled"
	}
	return map[string]any{"exit_code": c.exitCode, "signal": c.signal, "oom_killed": c.oomKilled, "reason": reason}
}

// readPipe feeds one output pipe into the buffer until EOF (runs on its own goroutine).
func (c *Child) readPipe(f *os.File, s int) {
	buf := make([]byte, pipeRead)
	for {
		n, err := f.Read(buf)
		if n > 0 {
			mu.Lock()
			c.feed(s, buf[:n])
			mu.Unlock()
		}
		if err != nil {
			break
		}
	}
	f.Close()
	mu.Lock()
	c.eof(s)
	mu.Unlock()
}

// feed splits data into lines (a partial line waits for its end, or is cut at the buffer limit).
func (c *Child) feed(s int, data []byte) {
	limit := c.proc.buffer.limit
	i := strings.LastIndexByte(string(data), '\n')
	if i < 0 {
		c.partial[s] = append(c.partial[s], data...)
		if len(c.partial[s]) >= limit {
			c.emit(s, [][]byte{c.partial[s]})
			c.partial[s] = nil
		}
		return
	}
	whole := data[:i]
	if len(c.partial[s]) > 0 {
		whole = append(c.partial[s], whole...)
		c.partial[s] = nil
	}
	parts := strings.Split(string(whole), "\n")
	raws := make([][]byte, 0, len(parts)+1)
	for _, p := range parts {
		raws = append(raws, []byte(p))
	}
	if rest := data[i+1:]; len(rest) > 0 {
		c.partial[s] = append([]byte(nil), rest...)
	}
	if len(c.partial[s]) >= limit {
		raws = append(raws, c.partial[s])
		c.partial[s] = nil
	}
	c.emit(s, raws)
}

func (c *Child) emit(s int, raws [][]byte) {
	ts := nowMs()
	items := make([]outputLine, len(raws))
	for i, r := range raws {
		items[i] = lineOf(s, r, ts)
	}
	c.proc.buffer.extend(items)
}

func (c *Child) flushPartial(s int) {
	if len(c.partial[s]) > 0 {
		c.emit(s, [][]byte{c.partial[s]})
		c.partial[s] = nil
	}
}

func (c *Child) eof(s int) {
	c.openFds--
	c.flushPartial(s)
	if c.reaped && c.openFds == 0 {
		c.finish()
	}
}

// onReaped records the exit (needs mu). A SIGKILL death the agent did not cause while the cgroup's
// oom_kill counter grew is an OOM kill.
func (c *Child) onReaped(ws syscall.WaitStatus) {
	if c.reaped {
		return
	}
	c.reaped = true
	t := nowMs()
	c.endedAt = &t
	if ws.Signaled() {
		sig := int(ws.Signal())
		c.signal = &sig
	} else {
		code := ws.ExitStatus()
		c.exitCode = &code
	}
	oomNow := readOOMKills()
	if c.signal != nil && *c.signal == int(syscall.SIGKILL) && !c.killSent && !c.timedOut {
		if oomNow >= 0 && table.oomSeen >= 0 && oomNow > table.oomSeen {
			c.oomKilled = true
		}
	}
	if oomNow >= 0 {
		table.oomSeen = oomNow
	}
	if c.timeoutTimer != nil {
		c.timeoutTimer.Stop()
		c.timeoutTimer = nil
	}
	c.closeStdin()
	if c.openFds == 0 {
		c.finish()
	} else {
		c.grace = time.AfterFunc(exitDrainGrace, func() {
			mu.Lock()
			defer mu.Unlock()
			c.grace = nil
			if c.finished {
				return
			}
			c.flushPartial(streamStdout)
			c.flushPartial(streamStderr)
			c.finish()
		})
	}
}

func (c *Child) finish() {
	if c.finished {
		return
	}
	c.finished = true
	if c.grace != nil {
		c.grace.Stop()
		c.grace = nil
	}
	close(c.done)
	c.proc.onChildFinished(c)
}

func (c *Child) onTimeout() {
	c.timeoutTimer = nil
	if !c.reaped {
		c.timedOut = true
		c.killTree(syscall.SIGKILL)
	}
}

func (c *Child) closeStdin() {
	if c.stdin != nil {
		c.stdin.Close()
		c.stdin = nil
	}
}

// signalGroup sends sig to the process group (to the process alone if the group is gone while it is not
// reaped yet). -> whether it was sent.
func (c *Child) signalGroup(sig syscall.Signal) bool {
	if sig == syscall.SIGKILL {
		c.killSent = true
	}
	if c.reaped && reaperHas(c.pid) {
		return false // pid reused by another of our children: do not touch its group
	}
	err := syscall.Kill(-c.pid, sig)
	if err == nil {
		return true
	}
	if err != syscall.ESRCH {
		return false
	}
	if !c.reaped {
		return syscall.Kill(c.pid, sig) == nil
	}
	return false
}

// killTree sends sig to the whole tree, also after the process itself exited.
func (c *Child) killTree(sig syscall.Signal) bool {
	if sig == syscall.SIGKILL {
		c.killSent = true
	}
	if c.tree == nil {
		return c.signalGroup(sig)
	}
	return trees.signalTree(c.tree, sig) > 0
}

func (c *Child) treeAlive() bool {
	if c.tree == nil {
		return !c.reaped
	}
	return trees.alive(c.tree)
}

// terminate: SIGTERM the tree, SIGKILL what is left of it after `grace`.
func (c *Child) terminate(grace time.Duration) {
	if !c.treeAlive() {
		return
	}
	c.killTree(syscall.SIGTERM)
	if c.escalate == nil {
		c.escalate = time.AfterFunc(grace, func() {
			mu.Lock()
			defer mu.Unlock()
			c.escalate = nil
			if c.treeAlive() {
				c.killTree(syscall.SIGKILL)
			}
		})
	}
}
