package main

// The core's rows of the routing table (routing.Router._table): health, info and the /processes routes.

import (
	"net/http"
	"time"
)

func coreRoutes() []Route {
	routes := []Route{
		{Method: "GET", Pattern: "health", Handler: func(w http.ResponseWriter, r *http.Request, p Params) {
			writeJSON(w, 200, map[string]bool{"healthy": true})
		}},
		{Method: "GET", Pattern: "info", Handler: hInfo},
	}
	return append(routes, processRoutes()...)
}

// hInfo answers GET /api/v1/info (daemon.daemon_info). Uptime is wall-clock: after a CRIU restore on another
// boot the monotonic clock restarts.
func hInfo(w http.ResponseWriter, r *http.Request, p Params) {
	running, total := table.counts()
	up := int64(time.Since(startWall.Round(0)).Seconds())
	if up < 0 {
		up = 0
	}
	writeJSON(w, 200, map[string]any{
		"version":           agentVersion,
		"uptime_secs":       up,
		"running_processes": running,
		"total_processes":   total,
	})
}
