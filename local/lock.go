package local

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// LockPath is the machine-wide lock a running supervisor holds. The names
// of network namespaces are machine-wide, so one local mesh runs per
// machine; the lock tells `up` and `down` a live mesh of another state
// directory (which they must leave alone) from the leftovers of a crash
// (which they clean). The kernel drops the lock when its holder dies, even
// by SIGKILL. Like /run/xtables.lock, the empty file stays in place: removing
// a lock file races with processes that are opening it.
const LockPath = "/run/ambit-local.lock"

// lockOwner says who holds a mesh lock.
type lockOwner struct {
	PID      int
	Start    uint64 // start time of PID, from /proc/PID/stat
	StateDir string
}

func (o lockOwner) String() string {
	return fmt.Sprintf("supervisor pid %d, state directory %s", o.PID, o.StateDir)
}

// acquireLock takes the lock at path without waiting and records owner in
// it. It returns nil and the current owner when another process holds it.
func acquireLock(path string, owner lockOwner) (*os.File, *lockOwner, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("opening lock %s: %w", path, err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			held := readLockOwner(path)
			return nil, &held, nil
		}
		return nil, nil, fmt.Errorf("locking %s: %w", path, err)
	}
	if err := f.Truncate(0); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("writing lock %s: %w", path, err)
	}
	if _, err := f.WriteAt(fmt.Appendf(nil, "%d %d %s\n", owner.PID, owner.Start, owner.StateDir), 0); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("writing lock %s: %w", path, err)
	}
	return f, nil, nil
}

// lockHolder returns the owner of the lock at path if a live process holds
// it, probing with a lock it releases at once.
func lockHolder(path string) (*lockOwner, error) {
	f, err := os.OpenFile(path, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("opening lock %s: %w", path, err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			held := readLockOwner(path)
			return &held, nil
		}
		return nil, fmt.Errorf("locking %s: %w", path, err)
	}
	return nil, nil // closing f releases the probe
}

// readLockOwner reads "PID STARTTIME STATEDIR"; fields it cannot read
// stay zero.
func readLockOwner(path string) lockOwner {
	data, _ := os.ReadFile(path)
	f := strings.SplitN(strings.TrimSpace(string(data)), " ", 3)
	var o lockOwner
	o.PID, _ = strconv.Atoi(f[0])
	if len(f) > 1 {
		o.Start, _ = strconv.ParseUint(f[1], 10, 64)
	}
	if len(f) > 2 {
		o.StateDir = f[2]
	}
	return o
}

// foreignMesh returns an error when a live mesh of another state
// directory than stateDir holds the lock at path.
func foreignMesh(path, stateDir string) error {
	held, err := lockHolder(path)
	if err != nil || held == nil {
		return err
	}
	if filepath.Clean(held.StateDir) == filepath.Clean(stateDir) {
		return nil
	}
	return fmt.Errorf("another local mesh is running (%s); only one runs per machine: stop it with `ambit local down --state-dir %s`", held, held.StateDir)
}
