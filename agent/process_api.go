package main

// The /api/v1/processes handlers, ported from emulator/agent/process_api.py: start, run (streamed as SSE),
// list and inspect, output and follow, kill (the whole tree), restart, signal, stdin.

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"syscall"
)

var outputStreams = []struct {
	op      string
	streams []int
}{{"stdout", []int{streamStdout}}, {"stderr", []int{streamStderr}}, {"output", []int{streamStdout, streamStderr}}}

// withProc looks up {ref} under mu and runs h with it (still under mu).
func withProc(h func(w http.ResponseWriter, r *http.Request, p *Proc)) HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request, params Params) {
		mu.Lock()
		proc, err := table.lookup(params["ref"])
		if err != nil {
			mu.Unlock()
			writeError(w, err)
			return
		}
		h(w, r, proc) // h unlocks mu
	}
}

func processRoutes() []Route {
	routes := []Route{
		{Method: "GET", Pattern: "processes", Handler: hList},
		{Method: "POST", Pattern: "processes", Handler: hStart},
		{Method: "POST", Pattern: "processes/run", Handler: hRun},
		{Method: "GET", Pattern: "processes/{ref}", Handler: withProc(func(w http.ResponseWriter, r *http.Request, p *Proc) {
			info := p.info()
			mu.Unlock()
			writeJSON(w, 200, info)
		})},
		{Method: "DELETE", Pattern: "processes/{ref}", Handler: withProc(hKill)},
		{Method: "POST", Pattern: "processes/{ref}/restart", Handler: withProc(hRestart)},
		{Method: "POST", Pattern: "processes/{ref}/signal", Handler: withProc(hSignal)},
		{Method: "POST", Pattern: "processes/{ref}/stdin", Handler: withProc(hStdin)},
		{Method: "POST", Pattern: "processes/{ref}/stdin/close", Handler: withProc(hStdinClose)},
	}
	for _, o := range outputStreams {
		streams := o.streams
		routes = append(routes,
			Route{Method: "GET", Pattern: "processes/{ref}/" + o.op, Handler: withProc(func(w http.ResponseWriter, r *http.Request, p *Proc) {
				lines := p.buffer.snapshot(streams)
				pid := p.pid()
				mu.Unlock()
				writeJSON(w, 200, map[string]any{"pid": pid, "lines": lines, "line_count": len(lines)})
			})},
			Route{Method: "GET", Pattern: "processes/{ref}/" + o.op + "/follow", Handler: withProc(func(w http.ResponseWriter, r *http.Request, p *Proc) {
				mu.Unlock()
				if !startSSE(w, r) {
					return
				}
				if streamLines(w, r, p, streams) {
					_, _ = w.Write([]byte("event: eof\ndata: {}\n\n"))
				}
			})})
	}
	return routes
}

func hList(w http.ResponseWriter, r *http.Request, _ Params) {
	mu.Lock()
	list := make([]procInfo, 0, len(table.entries))
	for _, p := range table.entries {
		list = append(list, p.info())
	}
	mu.Unlock()
	writeJSON(w, 200, map[string]any{"processes": list})
}

func hStart(w http.ResponseWriter, r *http.Request, _ Params) {
	body, spec, err := readSpec(r)
	if err != nil {
		writeError(w, err)
		return
	}
	cfg, err := parseManaged(body)
	if err != nil {
		writeError(w, err)
		return
	}
	mu.Lock()
	if cfg != nil && cfg.Name != nil {
		if existing := table.byName[*cfg.Name]; existing != nil {
			// byName holds managed entries only; a stopped one whose process is gone gives up its name
			if existing.managed == nil || existing.managed.active() || !existing.child.finished {
				mu.Unlock()
				writeError(w, newHttpError(409, "NAME_CONFLICT", fmt.Sprintf("a managed process named %s already exists", pyRepr(*cfg.Name))))
				return
			}
			table.forget(existing)
		}
	}
	proc, err := table.startEntry(spec, cfg)
	if err != nil {
		mu.Unlock()
		writeError(w, newHttpError(400, "SPAWN_FAILED", fmt.Sprintf("failed to start %s: %s", spec.Command, err.Error())))
		return
	}
	info := proc.info()
	mu.Unlock()
	writeJSON(w, 201, info)
}

func hRun(w http.ResponseWriter, r *http.Request, _ Params) {
	_, spec, err := readSpec(r)
	if err != nil {
		writeError(w, err)
		return
	}
	mu.Lock()
	proc, err := table.startEntry(spec, nil)
	if err != nil {
		mu.Unlock()
		se, ok := err.(*SpawnError)
		if !ok {
			se = &SpawnError{err.Error(), 127}
		}
		if !startSSE(w, r) {
			return
		}
		_, _ = w.Write(sseEvent("output", map[string]any{"line": se.Message, "timestamp": nowMs(), "stream": "stderr"}))
		_, _ = w.Write(sseEvent("exited", map[string]any{"exit_code": se.ExitCode, "signal": nil, "oom_killed": false, "reason": "exited"}))
		return
	}
	child := proc.child
	started := sseEvent("started", map[string]any{"pid": child.pid, "started_at": child.startedAt})
	mu.Unlock()
	if !startSSE(w, r) {
		return
	}
	_, _ = w.Write(started)
	if !streamLines(w, r, proc, []int{streamStdout, streamStderr}) {
		return // the client left; the process keeps running (it stays in the table)
	}
	mu.Lock()
	ev := sseEvent("exited", child.exitEvent())
	mu.Unlock()
	_, _ = w.Write(ev)
}

func hKill(w http.ResponseWriter, r *http.Request, p *Proc) {
	if p.managed != nil {
		p.managed.stop()
	} else {
		p.child.killTree(syscall.SIGKILL) // the whole tree, also what is left of it after the process exited
	}
	mu.Unlock()
	w.WriteHeader(204)
}

func hRestart(w http.ResponseWriter, r *http.Request, p *Proc) {
	if p.managed != nil {
		mu.Unlock()
		if err := p.managed.restartNow(); err != nil {
			writeError(w, err)
			return
		}
		mu.Lock()
		info := p.info()
		mu.Unlock()
		writeJSON(w, 200, info)
		return
	}
	p.child.killTree(syscall.SIGKILL)
	n, err := table.startEntry(p.spec, nil)
	if err != nil {
		mu.Unlock()
		writeError(w, newHttpError(400, "SPAWN_FAILED", fmt.Sprintf("failed to restart %s: %s", p.spec.Command, err.Error())))
		return
	}
	info := n.info()
	mu.Unlock()
	writeJSON(w, 200, info)
}

// validSignal: 0, or a signal number Python's signal.valid_signals() lists on Linux (1-31, 34-64).
func validSignal(n int64) bool {
	return n == 0 || (n >= 1 && n <= 31) || (n >= 34 && n <= 64)
}

func hSignal(w http.ResponseWriter, r *http.Request, p *Proc) {
	mu.Unlock()
	body, err := readJSON(r)
	if err != nil {
		writeError(w, err)
		return
	}
	sig, ok := isInt(body["signal"])
	if !ok || !validSignal(sig) {
		writeError(w, badRequest("`signal` must be a valid signal number, e.g. 15"))
		return
	}
	mu.Lock()
	c := p.child
	if sig == int64(syscall.SIGKILL) {
		c.killSent = true
	}
	sent := c.signalGroup(syscall.Signal(sig))
	mu.Unlock()
	writeJSON(w, 200, map[string]bool{"success": sent})
}

func stdinNotWritable(pid int, why string) error {
	return newHttpError(400, "STDIN_NOT_WRITABLE", fmt.Sprintf("stdin of process %d %s", pid, why))
}

func hStdin(w http.ResponseWriter, r *http.Request, p *Proc) {
	c := p.child
	if c.stdin == nil {
		why := "is not writable: it has its stdin closed"
		if !c.stdinPipe {
			why = "is not writable: it was not started with stdin_mode=pipe"
		}
		mu.Unlock()
		writeError(w, stdinNotWritable(c.pid, why))
		return
	}
	mu.Unlock()
	c.stdinMu.Lock()
	defer c.stdinMu.Unlock()
	buf := make([]byte, 64*1024)
	for {
		n, rerr := r.Body.Read(buf)
		if n > 0 {
			mu.Lock()
			f := c.stdin
			mu.Unlock()
			if f == nil {
				writeError(w, stdinNotWritable(c.pid, "is not writable: the pipe is closed"))
				return
			}
			if _, err := f.Write(buf[:n]); err != nil {
				writeError(w, stdinNotWritable(c.pid, "is not writable: the pipe is closed"))
				return
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return // the client vanished in the middle of the body
		}
	}
	w.WriteHeader(204)
}

func hStdinClose(w http.ResponseWriter, r *http.Request, p *Proc) {
	c := p.child
	if !c.stdinPipe {
		mu.Unlock()
		writeError(w, stdinNotWritable(c.pid, "was not started with stdin_mode=pipe"))
		return
	}
	c.closeStdin()
	mu.Unlock()
	w.WriteHeader(204)
}

// parseArgv reads TLE_ENTRYPOINT: a non-empty JSON list of strings.
func parseArgv(raw string) ([]string, error) {
	var argv []string
	if err := json.Unmarshal([]byte(raw), &argv); err != nil || len(argv) == 0 {
		return nil, fmt.Errorf("must be a non-empty JSON list of strings")
	}
	return argv, nil
}
