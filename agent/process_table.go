package main

// The process table, ported from emulator/agent/process_table.py: one entry (Proc) per started process,
// found by pid or managed name. One lock (mu) guards the table, the entries, their children, buffers and
// supervisors, and the tree tracker: the Python agent's single event loop, made explicit.

import (
	"os"
	"strconv"
	"sync"
	"syscall"
	"time"
)

var (
	mu    sync.Mutex
	table *processTable
	trees *treeTracker
)

// Proc is a process-table entry: the spec, the current Child, the output buffer, the optional supervisor.
type Proc struct {
	spec    *Spec
	serial  int
	buffer  *outputBuffer
	child   *Child
	managed *Managed
}

func (p *Proc) pid() int {
	if p.child == nil {
		return 0
	}
	return p.child.pid
}

// finished: no more output will come (follow streams end).
func (p *Proc) finished() bool { return p.buffer.closed }

type procInfo struct {
	Pid           int      `json:"pid"`
	Status        string   `json:"status"`
	ExitCode      *int     `json:"exit_code"`
	Signal        *int     `json:"signal"`
	StdinWritable bool     `json:"stdin_writable"`
	Command       string   `json:"command"`
	Args          []string `json:"args"`
	StartedAt     int64    `json:"started_at"`
	EndedAt       *int64   `json:"ended_at"`
	Managed       any      `json:"managed,omitempty"`
}

func (p *Proc) info() procInfo {
	c := p.child
	in := procInfo{Pid: c.pid, Status: c.status(), ExitCode: c.exitCode, Signal: c.signal,
		StdinWritable: c.stdin != nil, Command: p.spec.Command, Args: p.spec.Args, StartedAt: c.startedAt, EndedAt: c.endedAt}
	if p.managed != nil {
		in.Managed = p.managed.info()
	}
	return in
}

func (p *Proc) onChildFinished(c *Child) {
	if c != p.child {
		return
	}
	if p.managed == nil {
		p.buffer.close()
		table.onEntryFinished()
	} else {
		p.managed.onChildFinished(c)
	}
}

type processTable struct {
	outputLimit, maxFinished int
	serial                   int
	entries                  []*Proc // in start order
	byPid                    map[int]*Proc
	byName                   map[string]*Proc
	oomSeen                  int64
	baseEnv                  [][2]string
	defaultUser              string
}

func initTable(outputLimit, maxFinished int) {
	table = &processTable{outputLimit: outputLimit, maxFinished: maxFinished, byPid: map[int]*Proc{},
		byName: map[string]*Proc{}, oomSeen: readOOMKills(), baseEnv: baseEnv(), defaultUser: os.Getenv("TLE_DEFAULT_USER")}
	trees = newTreeTracker()
	reaper.after = append(reaper.after, func() {
		mu.Lock()
		defer mu.Unlock()
		trees.scan()
	})
}

func (t *processTable) counts() (running, total int) {
	mu.Lock()
	defer mu.Unlock()
	for _, p := range t.entries {
		if p.child != nil && !p.child.reaped {
			running++
		}
	}
	return running, len(t.entries)
}

// spawn starts a new incarnation of proc (needs mu). Errors: *SpawnError.
func (t *processTable) spawn(proc *Proc) (*Child, error) {
	spec := proc.spec
	l, err := launchSettings(spec, nil)
	if err != nil {
		return nil, err
	}
	token := newToken()
	env := l.env[:0:0]
	for _, kv := range l.env {
		if len(kv) < len(treeMarker)+1 || kv[:len(treeMarker)+1] != treeMarker+"=" {
			env = append(env, kv)
		}
	}
	l.env = append(env, treeMarker+"="+token) // inherited by every descendant: the second signal of membership
	pipes, err := makePipes(spec)
	if err != nil {
		return nil, spawnFailure(err, spec.Command)
	}
	c := &Child{proc: proc, done: make(chan struct{}), stdin: pipes.stdin, stdinPipe: pipes.stdin != nil}
	pid, err := spawnChild(func() (int, error) {
		return forkExec(spec.Command, spec.Args, l, pipes.childFds, nil)
	}, func(ws syscall.WaitStatus) {
		mu.Lock()
		defer mu.Unlock()
		c.onReaped(ws)
	})
	if err != nil {
		pipes.closeAll()
		return nil, err
	}
	pipes.closeChildEnds()
	c.pid = pid
	c.startedAt = nowMs()
	c.startMono = time.Now()
	c.tree = trees.register(token, pid)
	for s, f := range []*os.File{pipes.stdout, pipes.stderr} {
		if f != nil {
			c.openFds++
			go c.readPipe(f, s)
		}
	}
	if spec.Timeout > 0 {
		c.timeoutTimer = time.AfterFunc(time.Duration(spec.Timeout*float64(time.Second)), func() {
			mu.Lock()
			defer mu.Unlock()
			c.onTimeout()
		})
	}
	if old := proc.child; old != nil && t.byPid[old.pid] == proc {
		delete(t.byPid, old.pid)
	}
	if other := t.byPid[pid]; other != nil && other != proc { // pid reuse: forget the stale entry
		t.forget(other)
	}
	proc.child = c
	t.byPid[pid] = proc
	if proc.managed != nil {
		proc.managed.onSpawned(c)
	}
	return c, nil
}

// startEntry makes a new entry and spawns it (needs mu).
func (t *processTable) startEntry(spec *Spec, cfg *ManagedCfg) (*Proc, error) {
	t.serial++
	proc := &Proc{spec: spec, serial: t.serial, buffer: newOutputBuffer(t.outputLimit)}
	if cfg != nil {
		proc.managed = newManaged(proc, cfg)
	}
	if _, err := t.spawn(proc); err != nil {
		return nil, err
	}
	t.entries = append(t.entries, proc)
	if proc.managed != nil && proc.managed.name != nil {
		t.byName[*proc.managed.name] = proc
	}
	return proc, nil
}

func (t *processTable) forget(proc *Proc) {
	for i, p := range t.entries {
		if p == proc {
			t.entries = append(t.entries[:i], t.entries[i+1:]...)
			break
		}
	}
	if proc.child != nil && t.byPid[proc.child.pid] == proc {
		delete(t.byPid, proc.child.pid)
	}
	if proc.managed != nil && proc.managed.name != nil && t.byName[*proc.managed.name] == proc {
		delete(t.byName, *proc.managed.name)
	}
}

// onEntryFinished forgets the oldest finished entries beyond TLE_MAX_FINISHED_PROCESSES.
func (t *processTable) onEntryFinished() {
	var finished []*Proc
	for _, p := range t.entries {
		if p.finished() && (p.child == nil || p.child.reaped) {
			finished = append(finished, p)
		}
	}
	for i := 0; i < len(finished)-t.maxFinished; i++ {
		t.forget(finished[i])
	}
}

// defaultOwner is the (uid, gid) new files get when TLE_DEFAULT_USER is set and the agent is root.
func defaultOwner() (uid, gid int, ok bool) {
	if table.defaultUser == "" || os.Geteuid() != 0 {
		return 0, 0, false
	}
	ru, err := resolveUser(table.defaultUser)
	if err != nil || (ru.uid == 0 && ru.gid == 0) {
		return 0, 0, false
	}
	return int(ru.uid), int(ru.gid), true
}

// lookup finds an entry by pid or managed name (404 otherwise). Needs mu.
func (t *processTable) lookup(ref string) (*Proc, error) {
	var proc *Proc
	if allDigits(ref) {
		if n, err := strconv.Atoi(ref); err == nil {
			proc = t.byPid[n]
		}
	} else {
		proc = t.byName[ref]
	}
	if proc == nil {
		return nil, newHttpError(404, "NOT_FOUND", "Process "+ref+" not found")
	}
	return proc, nil
}

// terminateAll is the shutdown: no more restarts; SIGTERM every process group, SIGKILL what is left after
// `grace`.
func (t *processTable) terminateAll(grace time.Duration) {
	mu.Lock()
	for _, p := range t.entries {
		if m := p.managed; m != nil {
			m.stopping = true
			if m.restartTimer != nil {
				m.restartTimer.Stop()
			}
		}
	}
	signalEverything(syscall.SIGTERM)
	mu.Unlock()
	deadline := time.Now().Add(grace)
	for liveChildren() > 0 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
		reapAll()
	}
	signalEverything(syscall.SIGKILL)
	time.Sleep(50 * time.Millisecond)
	reapAll()
}

// signalEverything signals every child's process group; as PID 1 also every other process.
func signalEverything(sig syscall.Signal) {
	for _, pid := range reaperPids() {
		if syscall.Kill(-pid, sig) != nil {
			_ = syscall.Kill(pid, sig)
		}
	}
	if os.Getpid() == 1 {
		_ = syscall.Kill(-1, sig)
	}
}

// startEntrypoint starts TLE_ENTRYPOINT (a JSON list) as an ordinary, unmanaged process.
func startEntrypoint() {
	raw := os.Getenv("TLE_ENTRYPOINT")
	if raw == "" {
		return
	}
	argv, err := parseArgv(raw)
	if err != nil {
		logf("ignoring TLE_ENTRYPOINT %q: %v", raw, err)
		return
	}
	spec := newSpec()
	spec.Command, spec.Args = argv[0], argv[1:]
	mu.Lock()
	defer mu.Unlock()
	proc, err := table.startEntry(spec, nil)
	if err != nil {
		logf("entrypoint %v could not be started: %v", argv, err)
		return
	}
	logf("entrypoint started as pid %d: %v", proc.pid(), argv)
}
