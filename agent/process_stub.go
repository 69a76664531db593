package main

// Temporary stand-ins for the process side (replaced by the port of process_table and process_api).

import "time"

type processTable struct{ outputLimit, maxFinished int }

var table *processTable

func initTable(outputLimit, maxFinished int) {
	table = &processTable{outputLimit: outputLimit, maxFinished: maxFinished}
}

func (t *processTable) counts() (running, total int) { return 0, 0 }

func (t *processTable) terminateAll(grace time.Duration) {}

func startEntrypoint() {}

func processRoutes() []Route { return nil }
