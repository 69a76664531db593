package main

// Routing, ported from emulator/agent/routing.py: one table of routes below /api/v1/. A path that no
// pattern matches is 404 NOT_FOUND; a path that some pattern matches but not with this method is 405
// METHOD_NOT_ALLOWED naming the allowed methods. HEAD is answered by every GET route that is not an upgrade.

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// Params holds the captured "{name}" segments of a route's pattern.
type Params map[string]string

// HandlerFunc answers one request; it writes its answer (errors with writeError) itself.
type HandlerFunc func(w http.ResponseWriter, r *http.Request, p Params)

// Route is one row of the table. Pattern is the path below /api/v1/ ("pty/{sid}/ws"); Upgrade routes
// switch protocols, so a HEAD cannot stand in for their GET.
type Route struct {
	Method  string
	Pattern string
	Handler HandlerFunc
	Upgrade bool
}

// extraRoutes are appended by other files' init() functions (files, PTY, tunnels).
var extraRoutes []Route

func (rt *Route) match(segs []string) Params {
	pat := strings.Split(rt.Pattern, "/")
	if len(pat) != len(segs) {
		return nil
	}
	p := Params{}
	for i, want := range pat {
		if strings.HasPrefix(want, "{") {
			p[want[1:len(want)-1]] = segs[i]
		} else if want != segs[i] {
			return nil
		}
	}
	return p
}

func (rt *Route) answers(method string) bool {
	return method == rt.Method || (method == "HEAD" && rt.Method == "GET" && !rt.Upgrade)
}

// router dispatches requests over its table: core routes first, then extraRoutes.
type router struct{ routes []Route }

func newRouter() *router {
	routes := append([]Route{}, coreRoutes()...)
	routes = append(routes, extraRoutes...)
	return &router{routes: routes}
}

// unquoteSeg decodes %XX like Python's urllib.parse.unquote: an invalid escape stays as it is.
func unquoteSeg(s string) string {
	if v, err := url.PathUnescape(s); err == nil {
		return v
	}
	return s
}

func (ro *router) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	defer func() {
		if rec := recover(); rec != nil {
			if rec == http.ErrAbortHandler {
				panic(rec)
			}
			logf("unhandled error in %s %s: %v", r.Method, r.RequestURI, rec)
			writeError(w, fmt.Errorf("%v", rec))
		}
	}()
	raw := r.RequestURI
	if i := strings.IndexByte(raw, '?'); i >= 0 {
		raw = raw[:i]
	}
	path := raw
	if !strings.HasPrefix(path, "/api/v1/") {
		if i := strings.Index(path, "/api/v1/"); i >= 0 {
			path = path[i:]
		}
	}
	parts := strings.Split(path, "/")
	segs := []string{}
	if len(parts) > 1 {
		segs = parts[1:]
	}
	for i := range segs {
		segs[i] = unquoteSeg(segs[i])
	}
	for len(segs) > 1 && segs[len(segs)-1] == "" {
		segs = segs[:len(segs)-1]
	}
	if len(segs) < 3 || segs[0] != "api" || segs[1] != "v1" {
		writeError(w, newHttpError(404, "NOT_FOUND", fmt.Sprintf("No route for %s %s", r.Method, raw)))
		return
	}
	var allowed []string
	for i := range ro.routes {
		rt := &ro.routes[i]
		p := rt.match(segs[2:])
		if p == nil {
			continue
		}
		if rt.answers(r.Method) {
			rt.Handler(w, r, p)
			return
		}
		if !contains(allowed, rt.Method) {
			allowed = append(allowed, rt.Method)
		}
	}
	if len(allowed) == 0 {
		writeError(w, newHttpError(404, "NOT_FOUND", fmt.Sprintf("No route for %s %s", r.Method, raw)))
		return
	}
	writeError(w, newHttpError(405, "METHOD_NOT_ALLOWED", fmt.Sprintf(
		"Method %s not allowed on %s (allowed: %s)", r.Method, path, strings.Join(allowed, ", "))))
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
