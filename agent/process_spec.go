package main

// Validation of the request bodies that start processes, ported from emulator/agent/process_spec.py: the
// Spec (what to run and how, enough to run it again) and the supervision settings of a managed process.
// Fields are checked in the Python order and the first wrong one is named in a 400 BAD_REQUEST.

import (
	"encoding/json"
	"net/http"
	"strings"
)

// Spec is a validated run/start request.
type Spec struct {
	Command    string
	Args       []string
	Env        map[string]*string // nil value: remove the variable
	WorkingDir string             // "" = the agent's cwd
	Timeout    float64            // seconds; 0 = none
	User       any                // nil, string or map[string]any
	StdinMode  string
	StdoutMode string
	StderrMode string
}

func newSpec() *Spec {
	return &Spec{Args: []string{}, Env: map[string]*string{}, StdinMode: "closed", StdoutMode: "capture", StderrMode: "capture"}
}

// isInt is a JSON integer (json.Number without fraction or exponent), as Python's int (not bool, not float).
func isInt(v any) (int64, bool) {
	n, ok := v.(json.Number)
	if !ok || strings.ContainsAny(string(n), ".eE") {
		return 0, false
	}
	i, err := n.Int64()
	return i, err == nil
}

func isNumber(v any) (float64, bool) {
	n, ok := v.(json.Number)
	if !ok {
		return 0, false
	}
	f, err := n.Float64()
	return f, err == nil
}

// pyType names a JSON value's Python type, for messages that name it.
func pyType(v any) string {
	switch x := v.(type) {
	case bool:
		return "bool"
	case json.Number:
		if _, ok := isInt(x); ok {
			return "int"
		}
		return "float"
	case []any:
		return "list"
	case map[string]any:
		return "dict"
	case nil:
		return "NoneType"
	}
	return "str"
}

// parseSpec validates a run/start body (process_spec.parse_spec).
func parseSpec(body map[string]any) (*Spec, error) {
	spec := newSpec()
	cmd, ok := body["command"].(string)
	if !ok || cmd == "" {
		return nil, badRequest("`command` is required and must be a non-empty string")
	}
	if strings.Contains(cmd, "\x00") {
		return nil, badRequest("`command` must not contain NUL bytes")
	}
	spec.Command = cmd
	if a, present := body["args"]; present && a != nil {
		list, ok := a.([]any)
		if !ok {
			return nil, badRequest("`args` must be a list of strings")
		}
		for _, x := range list {
			s, ok := x.(string)
			if !ok {
				return nil, badRequest("`args` must be a list of strings")
			}
			spec.Args = append(spec.Args, s)
		}
		for _, s := range spec.Args {
			if strings.Contains(s, "\x00") {
				return nil, badRequest("`args` must not contain NUL bytes")
			}
		}
	}
	if e, present := body["env"]; present && e != nil {
		m, ok := e.(map[string]any)
		if !ok {
			return nil, badRequest("`env` must be an object of string values")
		}
		for k, v := range m {
			if k == "" || strings.ContainsAny(k, "=\x00") {
				return nil, badRequest("invalid environment variable name %s", pyRepr(k))
			}
			if v == nil {
				spec.Env[k] = nil
				continue
			}
			s, ok := v.(string)
			if !ok {
				return nil, badRequest("`env` values must be strings (env[%s] is %s)", pyRepr(k), pyType(v))
			}
			if strings.Contains(s, "\x00") {
				return nil, badRequest("`env` values must not contain NUL bytes")
			}
			spec.Env[k] = &s
		}
	}
	if wd, present := body["working_dir"]; present && wd != nil {
		s, ok := wd.(string)
		if !ok || s == "" || strings.Contains(s, "\x00") {
			return nil, badRequest("`working_dir` must be a non-empty string")
		}
		spec.WorkingDir = s
	}
	if t, present := body["timeout"]; present && t != nil {
		f, ok := isNumber(t)
		if !ok || f < 0 {
			return nil, badRequest("`timeout` must be a non-negative number of seconds")
		}
		spec.Timeout = f
	}
	if u, present := body["user"]; present && u != nil {
		if err := checkUser(u); err != nil {
			return nil, err
		}
		spec.User = u
	}
	for _, f := range []struct {
		field   string
		allowed []string
		dst     *string
	}{
		{"stdin_mode", []string{"closed", "pipe"}, &spec.StdinMode},
		{"stdout_mode", []string{"capture", "discard"}, &spec.StdoutMode},
		{"stderr_mode", []string{"capture", "discard"}, &spec.StderrMode},
	} {
		v, present := body[f.field]
		if !present || v == nil {
			continue
		}
		s, _ := v.(string)
		if !contains(f.allowed, s) {
			return nil, badRequest("`%s` must be one of %s", f.field, strings.Join(f.allowed, ", "))
		}
		*f.dst = s
	}
	return spec, nil
}

// pyRepr quotes a string as Python's repr() does for plain strings.
func pyRepr(s string) string {
	if strings.Contains(s, "'") && !strings.Contains(s, "\"") {
		return "\"" + s + "\""
	}
	return "'" + strings.ReplaceAll(strings.ReplaceAll(s, "\\", "\\\\"), "'", "\\'") + "'"
}

func checkUser(u any) error {
	switch x := u.(type) {
	case string:
		if x == "" {
			return badRequest("`user` must not be empty")
		}
	case map[string]any:
		for _, k := range []string{"uid", "gid"} {
			if v := x[k]; v != nil {
				if i, ok := isInt(v); !ok || i < 0 {
					return badRequest("`user.%s` must be a non-negative integer", k)
				}
			}
		}
		if v := x["name"]; v != nil {
			if _, ok := v.(string); !ok {
				return badRequest("`user.name` must be a string")
			}
		}
		if x["name"] == nil && x["uid"] == nil {
			return badRequest("`user` object needs `name` or `uid`")
		}
	default:
		return badRequest("`user` must be a string or an object")
	}
	return nil
}

// RestartCfg and HealthCfg are the supervision settings, answered back in this key order.
type RestartCfg struct {
	Policy           string `json:"policy"`
	MaxRestarts      *int64 `json:"max_restarts"`
	InitialBackoffMs int64  `json:"initial_backoff_ms"`
	MaxBackoffMs     int64  `json:"max_backoff_ms"`
}

type HealthCfg struct {
	Type             string  `json:"type"`
	Port             int64   `json:"port"`
	Path             *string `json:"path"`
	InitialDelayMs   int64   `json:"initial_delay_ms"`
	IntervalMs       int64   `json:"interval_ms"`
	TimeoutMs        int64   `json:"timeout_ms"`
	FailureThreshold int64   `json:"failure_threshold"`
}

type ManagedCfg struct {
	Name        *string
	Restart     RestartCfg
	HealthCheck *HealthCfg
}

// parseManaged validates name/restart/health_check; nil when none is given (process_spec.parse_managed).
func parseManaged(body map[string]any) (*ManagedCfg, error) {
	name, restart, hc := body["name"], body["restart"], body["health_check"]
	if name == nil && restart == nil && hc == nil {
		return nil, nil
	}
	cfg := &ManagedCfg{Restart: RestartCfg{Policy: "never", InitialBackoffMs: 500, MaxBackoffMs: 30000}}
	if name != nil {
		s, ok := name.(string)
		if !ok || s == "" {
			return nil, badRequest("`name` must be a non-empty string")
		}
		if strings.Contains(s, "/") || allDigits(s) {
			return nil, badRequest("`name` must not contain '/' and must not be all digits")
		}
		cfg.Name = &s
	}
	if restart != nil {
		m, ok := restart.(map[string]any)
		if !ok {
			return nil, badRequest("`restart` must be an object")
		}
		cfg.Restart.Policy = "on_failure"
		if p := m["policy"]; p != nil {
			s, _ := p.(string)
			if !contains([]string{"never", "on_failure", "always"}, s) {
				return nil, badRequest("`restart.policy` must be one of never, on_failure, always")
			}
			cfg.Restart.Policy = s
		}
		var mr int64 = -1
		for _, f := range []struct {
			k   string
			dst *int64
		}{{"max_restarts", &mr}, {"initial_backoff_ms", &cfg.Restart.InitialBackoffMs}, {"max_backoff_ms", &cfg.Restart.MaxBackoffMs}} {
			if err := copyNonNegInt(m, f.k, "restart", f.dst); err != nil {
				return nil, err
			}
		}
		if mr >= 0 {
			cfg.Restart.MaxRestarts = &mr
		}
	}
	if hc != nil {
		m, ok := hc.(map[string]any)
		if !ok {
			return nil, badRequest("`health_check` must be an object")
		}
		typ, _ := m["type"].(string)
		if typ != "http" && typ != "tcp" {
			return nil, badRequest("`health_check.type` must be http or tcp")
		}
		port, ok := isInt(m["port"])
		if !ok || port < 1 || port > 65535 {
			return nil, badRequest("`health_check.port` must be an integer in 1..65535")
		}
		h := &HealthCfg{Type: typ, Port: port, InitialDelayMs: 5000, IntervalMs: 1000, TimeoutMs: 500, FailureThreshold: 3}
		if p := m["path"]; p != nil {
			s, ok := p.(string)
			if !ok {
				return nil, badRequest("`health_check.path` must be a string")
			}
			h.Path = &s
		}
		for _, f := range []struct {
			k   string
			dst *int64
		}{{"initial_delay_ms", &h.InitialDelayMs}, {"interval_ms", &h.IntervalMs}, {"timeout_ms", &h.TimeoutMs}, {"failure_threshold", &h.FailureThreshold}} {
			if err := copyNonNegInt(m, f.k, "health_check", f.dst); err != nil {
				return nil, err
			}
		}
		cfg.HealthCheck = h
	}
	return cfg, nil
}

func copyNonNegInt(src map[string]any, k, where string, dst *int64) error {
	v := src[k]
	if v == nil {
		return nil
	}
	i, ok := isInt(v)
	if !ok || i < 0 {
		return badRequest("`%s.%s` must be a non-negative integer", where, k)
	}
	*dst = i
	return nil
}

func allDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// readJSON reads a request body (at most 16 MiB) that must be a JSON object (http_request.read_json).
func readJSON(r *http.Request) (map[string]any, error) {
	raw, err := readBody(r, maxJSONBody)
	if err != nil {
		return nil, err
	}
	if len(strings.TrimSpace(string(raw))) == 0 {
		return nil, badRequest("request body must be a JSON object")
	}
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, badRequest("malformed JSON body: %v", err)
	}
	if dec.More() {
		return nil, badRequest("malformed JSON body: extra data")
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, badRequest("request body must be a JSON object")
	}
	return m, nil
}

// readSpec reads a request whose JSON body is a process spec (POST processes, processes/run, pty): the
// body, for the fields a route adds, and its parsed spec. Errors are *HttpError 400s.
func readSpec(r *http.Request) (map[string]any, *Spec, error) {
	body, err := readJSON(r)
	if err != nil {
		return nil, nil, err
	}
	spec, err := parseSpec(body)
	if err != nil {
		return nil, nil, err
	}
	return body, spec, nil
}
