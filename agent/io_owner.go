package main

// ioDefaultOwner is (uid, gid, true) of TLE_DEFAULT_USER when the agent runs as root, the owner of new
// files and of the directories made for them (process_table.default_owner); else ok is false.
func ioDefaultOwner() (uid, gid int, ok bool) {
	return 0, 0, false
}
