package local

import (
	"path/filepath"
	"strings"
	"testing"
)

func TestMeshLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.lock")
	if held, err := lockHolder(path); err != nil || held != nil {
		t.Fatalf("no lock file: holder %v, %v", held, err)
	}
	if err := foreignMesh(path, "/run/a"); err != nil {
		t.Fatalf("no lock file: %v", err)
	}
	owner := lockOwner{PID: 4242, Start: 99, StateDir: "/run/with space/a"}
	f, held, err := acquireLock(path, owner)
	if err != nil || held != nil || f == nil {
		t.Fatalf("acquire: %v %v %v", f, held, err)
	}
	// A second taker (another open file, as another process) is refused
	// and told who holds the lock.
	g, held, err := acquireLock(path, lockOwner{PID: 7, StateDir: "/run/b"})
	if err != nil || g != nil || held == nil || *held != owner {
		t.Fatalf("second acquire: %v %+v %v, want refused with owner %+v", g, held, err, owner)
	}
	if h, err := lockHolder(path); err != nil || h == nil || *h != owner {
		t.Fatalf("holder = %+v, %v; want %+v", h, err, owner)
	}
	tests := []struct {
		stateDir string
		wantErr  string
	}{
		{"/run/with space/a", ""},
		{"/run/with space/a/", ""},
		{"/run/b", "another local mesh is running (supervisor pid 4242, state directory /run/with space/a)"},
	}
	for _, tc := range tests {
		err := foreignMesh(path, tc.stateDir)
		if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
			t.Errorf("foreignMesh(%q) = %v, want %q", tc.stateDir, err, tc.wantErr)
		}
	}
	// Released (as when the holder dies, even by SIGKILL): free again.
	f.Close()
	if h, err := lockHolder(path); err != nil || h != nil {
		t.Fatalf("after release: holder %+v, %v", h, err)
	}
	if err := foreignMesh(path, "/run/b"); err != nil {
		t.Fatalf("after release: %v", err)
	}
	f2, held, err := acquireLock(path, lockOwner{PID: 8, Start: 1, StateDir: "/x"})
	if err != nil || held != nil {
		t.Fatalf("re-acquire: %v %v", held, err)
	}
	defer f2.Close()
	if got := readLockOwner(path); got != (lockOwner{PID: 8, Start: 1, StateDir: "/x"}) {
		t.Errorf("owner rewritten = %+v", got)
	}
}
