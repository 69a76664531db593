package main

// The central child reaper, ported from process_table.reap: the agent is PID 1 (or a subreaper on a host)
// and reaps EVERY child with wait4(-1, WNOHANG) on SIGCHLD. Statuses of pids nobody registered (orphans
// re-parented to the agent) are discarded. Nobody else calls cmd.Wait() or wait4.

import (
	"os"
	"os/signal"
	"sync"
	"syscall"
)

var reaper = struct {
	mu      sync.Mutex
	waiters map[int]func(ws syscall.WaitStatus)
	after   []func() // run after each reaping pass (process-tree scan)
}{waiters: map[int]func(syscall.WaitStatus){}}

// spawnChild runs start under the reaper's lock, so the child's exit cannot be reaped before onExit is
// registered for its pid. onExit runs on the reaper's goroutine, outside the lock, once per child.
func spawnChild(start func() (pid int, err error), onExit func(ws syscall.WaitStatus)) (int, error) {
	reaper.mu.Lock()
	defer reaper.mu.Unlock()
	pid, err := start()
	if err != nil {
		return 0, err
	}
	reaper.waiters[pid] = onExit
	return pid, nil
}

// liveChildren is how many registered children are not reaped yet.
func liveChildren() int {
	reaper.mu.Lock()
	defer reaper.mu.Unlock()
	return len(reaper.waiters)
}

// reapAll reaps every exited child now, then runs the after-reap hooks.
func reapAll() {
	for {
		var ws syscall.WaitStatus
		reaper.mu.Lock()
		pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			reaper.mu.Unlock()
			continue
		}
		if err != nil || pid <= 0 {
			reaper.mu.Unlock()
			break
		}
		cb := reaper.waiters[pid]
		delete(reaper.waiters, pid)
		reaper.mu.Unlock()
		if cb != nil {
			cb(ws)
		}
	}
	for _, f := range reaper.after {
		f()
	}
}

// startReaper makes the agent a child subreaper (on a host, orphans of its trees come back to it; as PID 1
// it is a no-op) and reaps on every SIGCHLD.
func startReaper() {
	const prSetChildSubreaper = 36
	_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGCHLD)
	go func() {
		for range ch {
			reapAll()
		}
	}()
	reapAll()
}

// reaperHas: whether pid is a registered child not reaped yet.
func reaperHas(pid int) bool {
	reaper.mu.Lock()
	defer reaper.mu.Unlock()
	_, ok := reaper.waiters[pid]
	return ok
}

// reaperPids lists the registered children not reaped yet.
func reaperPids() []int {
	reaper.mu.Lock()
	defer reaper.mu.Unlock()
	out := make([]int, 0, len(reaper.waiters))
	for pid := range reaper.waiters {
		out = append(out, pid)
	}
	return out
}
