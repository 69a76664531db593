// Command tle-agent is the in-sandbox agent of the Tensorlake emulator (Go port of emulator/agent).
//
// It runs as PID 1 inside every sandbox container and serves the sandbox data-plane HTTP API (/api/v1/...,
// PROTOCOL.md sections 5, 7 and 8) over HTTP/1.1 on a unix socket; the emulator's proxy forwards the SDK's
// requests to it verbatim. It is one static executable that needs nothing from the image.
//
// Invocation: tle-agent --socket /.tle/run/agent.sock. Environment (removed from what children inherit):
// TLE_AGENT_SOCKET (socket when --socket is not given), TLE_ENTRYPOINT (JSON list started at boot as an
// ordinary process), TLE_ENTRYPOINT_GATE (file to wait for before that), TLE_OUTPUT_LIMIT_BYTES (per-process
// output bound, default 16 MiB), TLE_DEFAULT_USER (user of processes whose request names none),
// TLE_MAX_FINISHED_PROCESSES (finished entries kept, default 1000). The full behaviour contract this program
// keeps is agent/CONTRACT.md (it was the docstring of the Python agent, emulator/agent, that this replaced;
// the "ported from <module>.py" notes in the files name that agent's modules, in git history).
package main

import (
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"
)

const (
	defaultSocket      = "/.tle/run/agent.sock"
	defaultOutputLimit = 16 * 1024 * 1024
	defaultMaxFinished = 1000
	agentVersion       = "0.1.0-tle-emulator"
	shutdownGrace      = 3 * time.Second
	gateTimeout        = 120 * time.Second
)

var startWall = time.Now()

// logf writes one log line on stderr (the container's log), as agent_log.log does.
func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "tle-agent: "+format+"\n", a...)
}

// envInt reads a positive integer setting; an invalid one is logged and ignored.
func envInt(name string, def int) int {
	raw := os.Getenv(name)
	if raw == "" {
		return def
	}
	v, err := strconv.Atoi(raw)
	if err != nil || v <= 0 {
		logf("ignoring invalid %s=%q", name, raw)
		return def
	}
	return v
}

func main() {
	def := os.Getenv("TLE_AGENT_SOCKET")
	if def == "" {
		def = defaultSocket
	}
	sock := flag.String("socket", def, "unix socket path to serve on")
	flag.Parse()
	os.Exit(run(*sock))
}

func run(sockPath string) int {
	// SIGHUP gets a no-op handler, not SIG_IGN: children must not inherit an ignored SIGHUP.
	stop := make(chan os.Signal, 2)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	signal.Notify(make(chan os.Signal, 1), syscall.SIGHUP)
	initTable(envInt("TLE_OUTPUT_LIMIT_BYTES", defaultOutputLimit), envInt("TLE_MAX_FINISHED_PROCESSES", defaultMaxFinished))
	startReaper()
	ln, err := listenUnix(sockPath)
	if err != nil {
		logf("%v", err)
		return 1
	}
	srv := &http.Server{Handler: newRouter(), ReadHeaderTimeout: 0, MaxHeaderBytes: 1 << 20}
	go func() { _ = srv.Serve(ln) }()
	logf("listening on %s (pid %d, output limit %d bytes)", sockPath, os.Getpid(), table.outputLimit)
	go entrypointAfterGate()
	// SIGUSR2 toggles the listener: closed, then bound again at the next SIGUSR2. gVisor cannot
	// checkpoint a sandbox holding a bound host socket (--host-uds=create), so the host closes it around
	// a gVisor checkpoint and has it bound again after the dump or restore (docs/gvisor.md).
	toggle := make(chan os.Signal, 2)
	signal.Notify(toggle, syscall.SIGUSR2)
	for {
		select {
		case <-toggle:
			if ln != nil {
				_ = ln.Close()
				ln = nil
				logf("listener closed for a checkpoint")
				continue
			}
			if ln, err = listenUnix(sockPath); err != nil {
				logf("listening again on %s failed: %v", sockPath, err)
				ln = nil
				continue
			}
			l := ln
			go func() { _ = srv.Serve(l) }()
			logf("listening again on %s", sockPath)
			continue
		case <-stop:
		}
		break
	}
	logf("shutting down")
	if ln != nil {
		_ = ln.Close()
	}
	table.terminateAll(shutdownGrace)
	_ = os.Remove(sockPath)
	return 0
}

// listenUnix binds the socket (a stale socket file is removed first) with mode 0600: only root reaches it.
func listenUnix(path string) (net.Listener, error) {
	if dir := dirOf(path); dir != "" {
		_ = os.MkdirAll(dir, 0o755)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.IsDir() {
			return nil, fmt.Errorf("socket path %s is a directory", path)
		}
		_ = os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o600); err != nil {
		return nil, err
	}
	return bufferedListener{ln}, nil
}

// connWriteBuffer is the send buffer of every accepted connection (bytes): a file download then moves
// in fewer, larger writes (about 7% faster for 50 MB than the default; bench/bench_any_image.py).
const connWriteBuffer = 4 << 20

// bufferedListener gives each accepted unix connection a larger send buffer.
type bufferedListener struct{ net.Listener }

func (l bufferedListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if uc, ok := c.(*net.UnixConn); ok && err == nil {
		_ = uc.SetWriteBuffer(connWriteBuffer)
	}
	return c, err
}

func dirOf(p string) string {
	for i := len(p) - 1; i >= 0; i-- {
		if p[i] == '/' {
			return p[:i]
		}
	}
	return ""
}

// entrypointAfterGate starts TLE_ENTRYPOINT once the TLE_ENTRYPOINT_GATE file exists: the image's own code
// must not run before the emulator's egress rules are in force (daemon._entrypoint_after_gate).
func entrypointAfterGate() {
	gate := os.Getenv("TLE_ENTRYPOINT_GATE")
	if gate != "" && os.Getenv("TLE_ENTRYPOINT") != "" {
		deadline := time.Now().Add(gateTimeout)
		for {
			if _, err := os.Stat(gate); err == nil {
				break
			}
			if time.Now().After(deadline) {
				logf("entrypoint not started: %s did not appear within %.0fs", gate, gateTimeout.Seconds())
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	startEntrypoint()
}
