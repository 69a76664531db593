package main

// The /api/v1/pty handlers and the registry of PTY sessions (live ones, and the latest exited ones).
// Ported from emulator/agent/pty_api.py; PROTOCOL.md, "PTY".

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/http"
	"sync"
	"time"
)

const (
	maxPtySessions = 256 // live sessions
	maxExitedPty   = 64  // exited sessions kept (for a late attach, GET, DELETE); the oldest are forgotten
)

// ptys is the registry of sessions, in creation order.
var ptys = struct {
	mu    sync.Mutex
	order []*PtySession
	byID  map[string]*PtySession
}{byID: map[string]*PtySession{}}

func init() {
	extraRoutes = append(extraRoutes,
		Route{Method: "GET", Pattern: "pty", Handler: ioPtyList},
		Route{Method: "POST", Pattern: "pty", Handler: ioPtyCreate},
		Route{Method: "GET", Pattern: "pty/{sid}", Handler: withPty(func(w http.ResponseWriter, r *http.Request, s *PtySession) {
			writeJSON(w, 200, s.info())
		})},
		Route{Method: "DELETE", Pattern: "pty/{sid}", Handler: withPty(ioPtyDelete)},
		Route{Method: "GET", Pattern: "pty/{sid}/ws", Handler: withPty(ioPtyAttach), Upgrade: true},
		Route{Method: "POST", Pattern: "pty/{sid}/resize", Handler: withPty(ioPtyResize)},
	)
}

func ioRandomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// withPty looks the session {sid} up (404 NOT_FOUND) before the handler runs.
func withPty(h func(w http.ResponseWriter, r *http.Request, s *PtySession)) HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request, p Params) {
		ptys.mu.Lock()
		s := ptys.byID[p["sid"]]
		ptys.mu.Unlock()
		if s == nil {
			writeError(w, newHttpError(404, "NOT_FOUND", fmt.Sprintf("PTY session %s not found", p["sid"])))
			return
		}
		h(w, r, s)
	}
}

func ioPtyList(w http.ResponseWriter, r *http.Request, _ Params) {
	ptys.mu.Lock()
	list := append([]*PtySession{}, ptys.order...)
	ptys.mu.Unlock()
	infos := make([]PtyInfo, 0, len(list))
	for _, s := range list {
		infos = append(infos, s.info())
	}
	writeJSON(w, 200, map[string]any{"sessions": infos})
}

// ioForget removes a session from the registry (ptys.mu held).
func ioForget(s *PtySession) {
	if ptys.byID[s.ID] != s {
		return
	}
	delete(ptys.byID, s.ID)
	for i, x := range ptys.order {
		if x == s {
			ptys.order = append(ptys.order[:i], ptys.order[i+1:]...)
			break
		}
	}
}

// ioOnPtyFinished keeps the maxExitedPty latest exited sessions.
func ioOnPtyFinished() {
	ptys.mu.Lock()
	defer ptys.mu.Unlock()
	var exited []*PtySession
	for _, s := range ptys.order {
		if s.isFinished() {
			exited = append(exited, s)
		}
	}
	for i := 0; i < len(exited)-maxExitedPty; i++ {
		ioForget(exited[i])
	}
}

// ioSizeField is `rows` or `cols` of a create body: default when absent, else an integer in 1..65535.
func ioSizeField(body map[string]any, k string, def int) (int, error) {
	v, present := body[k]
	if !present || v == nil {
		return def, nil
	}
	n, ok := isInt(v)
	if !ok || n <= 0 || n > 65535 {
		return 0, badRequest("`%s` must be an integer in 1..65535", k)
	}
	return int(n), nil
}

// ioPtyCreate answers POST /api/v1/pty: a process spec plus rows/cols (24x80) -> 201 {session_id, token};
// 429 TOO_MANY_SESSIONS past maxPtySessions live ones; 400 SPAWN_FAILED when it cannot start.
func ioPtyCreate(w http.ResponseWriter, r *http.Request, _ Params) {
	body, spec, err := readSpec(r)
	if err != nil {
		writeError(w, err)
		return
	}
	rows, err := ioSizeField(body, "rows", 24)
	if err == nil {
		var cols int
		if cols, err = ioSizeField(body, "cols", 80); err == nil {
			err = ioPtyStart(w, spec, rows, cols)
		}
	}
	if err != nil {
		writeError(w, err)
	}
}

func ioPtyStart(w http.ResponseWriter, spec *Spec, rows, cols int) error {
	ptys.mu.Lock()
	live := 0
	for _, s := range ptys.order {
		if !s.isFinished() {
			live++
		}
	}
	ptys.mu.Unlock()
	if live >= maxPtySessions {
		return newHttpError(429, "TOO_MANY_SESSIONS", fmt.Sprintf("at most %d PTY sessions may run at once", maxPtySessions))
	}
	s := &PtySession{ID: ioRandomHex(8), Token: ioRandomHex(16), spec: spec, rows: rows, cols: cols,
		createdAt: time.Now().UnixMilli(), onFinished: ioOnPtyFinished}
	s.cond = sync.NewCond(&s.mu)
	if err := ioPtyLaunch(s); err != nil {
		return err
	}
	ptys.mu.Lock()
	ptys.order = append(ptys.order, s)
	ptys.byID[s.ID] = s
	ptys.mu.Unlock()
	go s.pump()
	writeJSON(w, 201, map[string]string{"session_id": s.ID, "token": s.Token})
	return nil
}

func ioPtyDelete(w http.ResponseWriter, r *http.Request, s *PtySession) {
	ptys.mu.Lock()
	ioForget(s)
	ptys.mu.Unlock()
	s.delete()
	w.WriteHeader(204)
}

func ioPtyResize(w http.ResponseWriter, r *http.Request, s *PtySession) {
	body, err := readJSON(r)
	if err != nil {
		writeError(w, err)
		return
	}
	rows, rok := isInt(body["rows"])
	cols, cok := isInt(body["cols"])
	if !rok || !cok || rows <= 0 || rows > 65535 || cols <= 0 || cols > 65535 {
		writeError(w, badRequest("`rows` and `cols` must be integers in 1..65535"))
		return
	}
	s.resize(int(cols), int(rows))
	writeJSON(w, 200, s.info())
}

// ioPtyAttach answers GET /api/v1/pty/{sid}/ws: the token (query `token` or header X-PTY-Token, either
// may carry it) else 403 INVALID_TOKEN; 426 without the upgrade; then frames until the client leaves.
func ioPtyAttach(w http.ResponseWriter, r *http.Request, s *PtySession) {
	good := []byte(s.Token)
	q, _ := ioQueryParam(r, "token")
	okTok := false
	for _, t := range []string{q, r.Header.Get("X-PTY-Token")} {
		if t != "" && subtle.ConstantTimeCompare([]byte(t), good) == 1 {
			okTok = true
		}
	}
	if !okTok {
		writeError(w, newHttpError(403, "INVALID_TOKEN", "Invalid token"))
		return
	}
	if err := ioRequireFrames(r); err != nil {
		writeError(w, err)
		return
	}
	stream, err := ioSwitchToFrames(w)
	if err != nil {
		return
	}
	s.attach(stream)
	defer func() {
		s.detach(stream)
		stream.Drop()
	}()
	for {
		kind, msg, ok := stream.Read()
		if !ok || kind == frameClose {
			return
		}
		if kind != frameBinary || len(msg) == 0 {
			continue // text messages are ignored
		}
		switch msg[0] {
		case ptyOpData:
			if len(msg) > 1 {
				s.writeInput(msg[1:])
			}
		case ptyOpResize:
			if len(msg) >= 5 {
				s.resize(int(binary.BigEndian.Uint16(msg[1:3])), int(binary.BigEndian.Uint16(msg[3:5])))
			}
		case ptyOpReady:
			s.onReady(stream)
		}
	}
}
