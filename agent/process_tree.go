package main

// Process trees, ported from emulator/agent/process_tree.py (its docstring explains the three signals of
// membership: remembered ancestry from /proc scans, the TLE_PROCESS_TREE marker in the environment, the
// session). Kill, a run's timeout and a managed process's stop end the WHOLE tree, however members detached.
// SIGKILL first freezes the tree (SIGSTOP) so no member can fork between the scan and the kill. A pid is only
// signalled while its start time is the one seen when it was attributed. All methods need mu.

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strconv"
	"syscall"
	"time"
)

const (
	treeMarker   = "TLE_PROCESS_TREE"
	scanInterval = 100 * time.Millisecond
	freezeRounds = 20
)

type procStat struct {
	ppid, sid int
	start     int64
	state     byte
}

// readStat -> ppid, session, start time (clock ticks), state of a live pid.
func readStat(pid int) (procStat, bool) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return procStat{}, false
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 || i+2 > len(data) {
		return procStat{}, false
	}
	f := bytes.Fields(data[i+2:])
	if len(f) < 20 {
		return procStat{}, false
	}
	ppid, e1 := strconv.Atoi(string(f[1]))
	sid, e2 := strconv.Atoi(string(f[3]))
	start, e3 := strconv.ParseInt(string(f[19]), 10, 64)
	if e1 != nil || e2 != nil || e3 != nil {
		return procStat{}, false
	}
	return procStat{ppid, sid, start, f[0][0]}, true
}

// readMarker -> whether the environment could be read, and the tree marker in it ("" if none).
func readMarker(pid int) (bool, string) {
	env, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/environ")
	if err != nil || len(env) == 0 {
		return false, ""
	}
	key := []byte(treeMarker + "=")
	for _, item := range bytes.Split(env, []byte{0}) {
		if bytes.HasPrefix(item, key) {
			return true, string(item[len(key):])
		}
	}
	return true, ""
}

// Tree is one started process and everything it spawned; members maps live pids to their start times.
type Tree struct {
	token   string
	rootPid int
	members map[int]int64
}

type knownPid struct {
	start int64
	tree  *Tree
}

type treeTracker struct {
	selfPid   int
	selfStart int64
	trees     map[string]*Tree
	bySession map[int]*Tree
	known     map[int]knownPid
	unsure    map[int]bool
	timer     *time.Timer
}

func newTreeTracker() *treeTracker {
	t := &treeTracker{selfPid: os.Getpid(), trees: map[string]*Tree{}, bySession: map[int]*Tree{},
		known: map[int]knownPid{}, unsure: map[int]bool{}}
	if st, ok := readStat(t.selfPid); ok {
		t.selfStart = st.start
	}
	return t
}

func newToken() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// register records a process just started by the agent with treeMarker=token: a new tree.
func (t *treeTracker) register(token string, pid int) *Tree {
	var start int64
	if st, ok := readStat(pid); ok {
		start = st.start
	}
	tree := &Tree{token: token, rootPid: pid, members: map[int]int64{pid: start}}
	t.trees[token] = tree
	t.bySession[pid] = tree
	t.known[pid] = knownPid{start, tree}
	t.arm()
	return tree
}

func (t *treeTracker) arm() {
	if t.timer == nil && len(t.trees) > 0 {
		t.timer = time.AfterFunc(scanInterval, func() {
			mu.Lock()
			defer mu.Unlock()
			t.timer = nil
			t.scan()
			t.arm()
		})
	}
}

func livePids() (map[int]bool, bool) {
	d, err := os.Open("/proc")
	if err != nil {
		return nil, false
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, false
	}
	live := make(map[int]bool, len(names))
	for _, n := range names {
		if pid, err := strconv.Atoi(n); err == nil {
			live[pid] = true
		}
	}
	return live, true
}

// scan attributes every pid not seen before and forgets pids that are gone and trees left empty.
func (t *treeTracker) scan() {
	live, ok := livePids()
	if !ok {
		return
	}
	t.afterRestore()
	for pid := range t.known {
		if !live[pid] {
			t.forget(pid)
		}
	}
	type fresh struct {
		st  procStat
		pid int
	}
	var fr []fresh
	for pid := range live {
		if _, ok := t.known[pid]; ok {
			continue
		}
		if st, ok := readStat(pid); ok {
			fr = append(fr, fresh{st, pid})
		}
	}
	sortFresh := func(a, b fresh) bool {
		if a.st.start != b.st.start {
			return a.st.start < b.st.start
		}
		return a.pid < b.pid
	}
	for i := 1; i < len(fr); i++ { // insertion sort: a parent is attributed before its children
		for j := i; j > 0 && sortFresh(fr[j], fr[j-1]); j-- {
			fr[j], fr[j-1] = fr[j-1], fr[j]
		}
	}
	for _, f := range fr {
		if _, ok := t.known[f.pid]; ok {
			continue
		}
		tree := t.attribute(f.pid, f.st.ppid, f.st.sid, f.st.start, 0)
		t.known[f.pid] = knownPid{f.st.start, tree}
		if tree != nil {
			tree.members[f.pid] = f.st.start
		}
	}
	t.retryUnsure(live)
	for token, tree := range t.trees {
		if len(tree.members) == 0 {
			delete(t.trees, token)
			if t.bySession[tree.rootPid] == tree {
				delete(t.bySession, tree.rootPid)
			}
		}
	}
}

// afterRestore: a CRIU restore recreates every process with its pid but a new start time; when the
// agent's own start time changed, take the new start times of all known processes.
func (t *treeTracker) afterRestore() {
	own, ok := readStat(t.selfPid)
	if !ok || own.start == t.selfStart {
		return
	}
	t.selfStart = own.start
	for pid, k := range t.known {
		st, ok := readStat(pid)
		if !ok {
			continue
		}
		t.known[pid] = knownPid{st.start, k.tree}
		if k.tree != nil {
			if _, ok := k.tree.members[pid]; ok {
				k.tree.members[pid] = st.start
			}
		}
	}
}

func (t *treeTracker) current(pid, depth int) (knownPid, bool) {
	entry, had := t.known[pid]
	st, ok := readStat(pid)
	if !ok {
		return knownPid{}, false
	}
	if had && entry.start == st.start {
		return entry, true
	}
	if had {
		t.forget(pid)
	}
	if depth > 64 {
		return knownPid{}, false
	}
	tree := t.attribute(pid, st.ppid, st.sid, st.start, depth+1)
	t.known[pid] = knownPid{st.start, tree}
	if tree != nil {
		tree.members[pid] = st.start
	}
	return t.known[pid], true
}

func (t *treeTracker) forget(pid int) {
	k, ok := t.known[pid]
	if !ok {
		return
	}
	delete(t.known, pid)
	if k.tree != nil {
		delete(k.tree.members, pid)
	}
	delete(t.unsure, pid)
}

func (t *treeTracker) attribute(pid, ppid, sid int, start int64, depth int) *Tree {
	if pid == t.selfPid {
		return nil
	}
	if ppid != t.selfPid && ppid > 0 {
		if parent, ok := t.current(ppid, depth); ok && parent.start <= start {
			if parent.tree == nil && t.unsure[ppid] {
				t.unsure[pid] = true
			}
			return parent.tree
		}
	}
	readable, token := readMarker(pid)
	if token != "" {
		if tree, ok := t.trees[token]; ok {
			return tree
		}
	}
	tree := t.bySession[sid]
	if tree == nil && !readable {
		t.unsure[pid] = true
	}
	return tree
}

func (t *treeTracker) retryUnsure(live map[int]bool) {
	for pid := range t.unsure {
		entry, ok := t.known[pid]
		if !live[pid] || !ok || entry.tree != nil {
			delete(t.unsure, pid)
			continue
		}
		readable, token := readMarker(pid)
		if tree, ok := t.trees[token]; ok && token != "" {
			t.known[pid] = knownPid{entry.start, tree}
			tree.members[pid] = entry.start
		}
		if readable {
			delete(t.unsure, pid)
		}
	}
}

func (t *treeTracker) liveMembers(tree *Tree) []int {
	var out []int
	for pid, start := range tree.members {
		st, ok := readStat(pid)
		if !ok || st.start != start {
			delete(tree.members, pid)
			continue
		}
		if st.state != 'Z' && st.state != 'X' {
			out = append(out, pid)
		}
	}
	return out
}

// alive: whether any process of the tree still runs (zombies do not count).
func (t *treeTracker) alive(tree *Tree) bool {
	t.scan()
	return len(t.liveMembers(tree)) > 0
}

// signalTree sends sig to every live process of the tree; -> how many were signalled.
func (t *treeTracker) signalTree(tree *Tree, sig syscall.Signal) int {
	t.scan()
	if sig != syscall.SIGKILL {
		n := 0
		for _, pid := range t.liveMembers(tree) {
			n += killOne(pid, sig)
		}
		return n
	}
	frozen := map[int]bool{}
	for i := 0; i < freezeRounds; i++ {
		var fresh []int
		for _, pid := range t.liveMembers(tree) {
			if !frozen[pid] {
				fresh = append(fresh, pid)
			}
		}
		if len(fresh) == 0 {
			break
		}
		for _, pid := range fresh {
			killOne(pid, syscall.SIGSTOP)
			frozen[pid] = true
		}
		t.scan()
	}
	n := 0
	for _, pid := range t.liveMembers(tree) {
		n += killOne(pid, syscall.SIGKILL)
	}
	return n
}

func killOne(pid int, sig syscall.Signal) int {
	if syscall.Kill(pid, sig) == nil {
		return 1
	}
	return 0
}
