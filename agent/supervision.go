package main

// Supervision of a managed process (name/restart/health_check given), ported from
// emulator/agent/supervision.py: the restart policy with exponential backoff (initial * 2^n capped at max; n
// resets after a run of 10 s or more), manual restarts and stops, and TCP/HTTP health checks. Needs mu.

import (
	"bufio"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type Managed struct {
	proc                *Proc
	name                *string
	id                  string
	restart             RestartCfg
	health              *HealthCfg
	status              string
	restartCount        int
	autoRestarts        int64
	healthStatus        string
	consecutiveFailures int64
	lastExit            map[string]any
	lastError           *string
	nextRestartAt       *int64
	stopping            bool
	restarting          bool
	backoffAttempt      int
	restartTimer        *time.Timer
	healthCancel        chan struct{}
	lock                sync.Mutex // serialises manual restarts
}

func newManaged(proc *Proc, cfg *ManagedCfg) *Managed {
	m := &Managed{proc: proc, name: cfg.Name, restart: cfg.Restart, health: cfg.HealthCheck, status: "starting",
		healthStatus: "starting"}
	if cfg.Name != nil {
		m.id = *cfg.Name
	} else {
		m.id = "mp-" + newToken()[:12]
	}
	if m.health == nil {
		m.healthStatus = "disabled"
	}
	return m
}

func (m *Managed) info() map[string]any {
	var hc any
	if m.health != nil {
		hc = *m.health
	}
	var lastExit any
	if m.lastExit != nil {
		lastExit = m.lastExit
	}
	return map[string]any{
		"id": m.id, "name": m.name, "status": m.status, "restart_count": m.restartCount, "restart": m.restart,
		"health_check": hc, "health_status": m.healthStatus, "consecutive_health_failures": m.consecutiveFailures,
		"last_exit": lastExit, "last_error": m.lastError, "next_restart_at": m.nextRestartAt,
	}
}

func (m *Managed) active() bool { return m.status != "stopped" }

func (m *Managed) onSpawned(c *Child) {
	m.nextRestartAt = nil
	m.consecutiveFailures = 0
	if m.health == nil {
		m.status, m.healthStatus = "running", "disabled"
		return
	}
	m.status, m.healthStatus = "starting", "starting"
	m.healthCancel = make(chan struct{})
	go m.healthLoop(c, m.healthCancel)
}

func (m *Managed) cancelHealth() {
	if m.healthCancel != nil {
		close(m.healthCancel)
		m.healthCancel = nil
	}
}

func (m *Managed) onChildFinished(c *Child) {
	m.cancelHealth()
	m.lastExit = map[string]any{"exit_code": c.exitCode, "signal": c.signal, "oom_killed": c.oomKilled, "ended_at": c.endedAt}
	if m.restarting {
		return
	}
	if m.stopping {
		m.stopped()
		return
	}
	failed := c.exitCode == nil || *c.exitCode != 0
	p := m.restart.Policy
	want := p == "always" || (p == "on_failure" && failed)
	if want && time.Since(c.startMono) >= 10*time.Second {
		m.backoffAttempt = 0
	}
	m.scheduleRestart(want)
}

func (m *Managed) scheduleRestart(want bool) {
	if want && m.restart.MaxRestarts != nil && m.autoRestarts >= *m.restart.MaxRestarts {
		want = false
	}
	if !want {
		m.stopped()
		return
	}
	attempt := m.backoffAttempt
	if attempt > 30 {
		attempt = 30
	}
	delay := m.restart.InitialBackoffMs << uint(attempt)
	if delay > m.restart.MaxBackoffMs || delay < 0 {
		delay = m.restart.MaxBackoffMs
	}
	m.backoffAttempt++
	m.status = "backing_off"
	at := nowMs() + delay
	m.nextRestartAt = &at
	m.restartTimer = time.AfterFunc(time.Duration(delay)*time.Millisecond, func() {
		mu.Lock()
		defer mu.Unlock()
		m.autoRestart()
	})
}

func (m *Managed) stopped() {
	m.status = "stopped"
	m.nextRestartAt = nil
	if m.restartTimer != nil {
		m.restartTimer.Stop()
		m.restartTimer = nil
	}
	m.proc.buffer.close()
	table.onEntryFinished()
}

func (m *Managed) autoRestart() {
	m.restartTimer = nil
	if m.stopping || m.restarting {
		return
	}
	m.restartCount++
	m.autoRestarts++
	if old := m.proc.child; old != nil {
		old.killTree(syscall.SIGKILL) // leftovers of the previous incarnation do not outlive it
	}
	if _, err := table.spawn(m.proc); err != nil {
		msg := err.Error()
		m.lastError = &msg
		m.proc.buffer.extend([]outputLine{{streamStderr, msg, nowMs(), len(msg) + 1}})
		m.scheduleRestart(true)
	}
}

// restartNow is a manual restart: the current incarnation is ended (SIGTERM, SIGKILL after 10 s) and
// awaited, then a new one starts with a fresh restart budget. Called WITHOUT mu.
func (m *Managed) restartNow() error {
	m.lock.Lock()
	defer m.lock.Unlock()
	mu.Lock()
	if m.restartTimer != nil {
		m.restartTimer.Stop()
		m.restartTimer = nil
	}
	m.restarting = true
	if old := m.proc.child; old != nil && !old.finished {
		old.terminate(managedStopWait)
		done := old.done
		mu.Unlock()
		<-done
		mu.Lock()
	}
	defer mu.Unlock()
	m.restarting = false
	m.stopping = false
	m.backoffAttempt = 0
	m.autoRestarts = 0 // a manual restart gives the restart policy a fresh budget
	m.proc.buffer.reopen()
	m.restartCount++
	if _, err := table.spawn(m.proc); err != nil {
		msg := err.Error()
		m.lastError = &msg
		m.stopped()
		return newHttpError(400, "SPAWN_FAILED", fmt.Sprintf("failed to restart %s: %s", m.proc.spec.Command, msg))
	}
	return nil
}

func (m *Managed) stop() {
	m.stopping = true
	if m.restartTimer != nil {
		m.restartTimer.Stop()
		m.restartTimer = nil
	}
	m.cancelHealth()
	c := m.proc.child
	m.status = "stopped"
	m.nextRestartAt = nil
	if c != nil && !c.reaped {
		c.terminate(managedStopWait)
		return
	}
	if c != nil {
		c.killTree(syscall.SIGKILL) // what the exited incarnation left behind (the root is gone: no grace)
	}
	if c == nil || c.finished {
		m.stopped()
	}
}

func sleepOrCancel(d time.Duration, cancel chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-cancel:
		return false
	}
}

func (m *Managed) healthLoop(c *Child, cancel chan struct{}) {
	hc := *m.health
	if !sleepOrCancel(time.Duration(maxI64(0, hc.InitialDelayMs))*time.Millisecond, cancel) {
		return
	}
	current := func() bool { return !c.reaped && !m.stopping && m.proc.child == c }
	for {
		mu.Lock()
		ok := current()
		mu.Unlock()
		if !ok {
			return
		}
		healthy := checkOnce(hc)
		mu.Lock()
		select {
		case <-cancel:
			mu.Unlock()
			return
		default:
		}
		if !current() {
			mu.Unlock()
			return
		}
		if healthy {
			m.consecutiveFailures = 0
			m.healthStatus, m.status = "healthy", "running"
		} else {
			m.consecutiveFailures++
			if m.consecutiveFailures >= maxI64(1, hc.FailureThreshold) {
				m.healthStatus = "unhealthy"
				if m.restart.Policy != "never" {
					msg := fmt.Sprintf("health check failed %d times in a row", m.consecutiveFailures)
					m.lastError = &msg
					c.terminate(managedStopWait)
					mu.Unlock()
					return
				}
			}
		}
		mu.Unlock()
		if !sleepOrCancel(time.Duration(maxI64(10, hc.IntervalMs))*time.Millisecond, cancel) {
			return
		}
	}
}

func maxI64(a, b int64) int64 {
	if a > b {
		return a
	}
	return b
}

// checkOnce probes the port inside the sandbox (IPv4 loopback, IPv6 if that refuses); http: a 2xx/3xx.
func checkOnce(hc HealthCfg) bool {
	timeout := time.Duration(maxI64(10, hc.TimeoutMs)) * time.Millisecond
	port := strconv.FormatInt(hc.Port, 10)
	conn, err := net.DialTimeout("tcp", "127.0.0.1:"+port, timeout)
	if err != nil && strings.Contains(err.Error(), "refused") {
		conn, err = net.DialTimeout("tcp", "[::1]:"+port, timeout)
	}
	if err != nil {
		return false
	}
	defer conn.Close()
	if hc.Type == "tcp" {
		return true
	}
	path := "/"
	if hc.Path != nil && *hc.Path != "" {
		path = *hc.Path
	}
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := conn.Write([]byte("GET " + path + " HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n")); err != nil {
		return false
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil && line == "" {
		return false
	}
	parts := strings.Fields(line)
	if len(parts) < 2 || !allDigits(parts[1]) {
		return false
	}
	code, _ := strconv.Atoi(parts[1])
	return code >= 200 && code < 400
}
