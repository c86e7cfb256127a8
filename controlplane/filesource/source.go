package filesource

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// EventType says what happened to an object.
type EventType int

const (
	Added EventType = iota + 1
	Updated
	Deleted
)

func (t EventType) String() string {
	switch t {
	case Added:
		return "Added"
	case Updated:
		return "Updated"
	case Deleted:
		return "Deleted"
	}
	return fmt.Sprintf("EventType(%d)", int(t))
}

// Event is one change to the loaded objects. For Deleted, Object is the last
// known version.
type Event struct {
	Type   EventType
	Key    Key
	Object Object
}

// Source watches a directory of manifests.
type Source struct {
	dir    string
	logger *slog.Logger

	// Debounce is how long Run waits after a file system event before
	// reloading, so that an editor's burst of writes becomes one reload.
	Debounce time.Duration
	// Rescan is the period of a full reload that catches what file system
	// events missed (e.g. on network file systems).
	Rescan time.Duration

	mu    sync.Mutex
	files map[string]*fileState
	snap  *Snapshot
}

// New returns a Source for dir. Nothing is read until Run.
func New(dir string, logger *slog.Logger) *Source {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Source{
		dir: dir, logger: logger.With("source", dir),
		Debounce: 100 * time.Millisecond, Rescan: 10 * time.Second,
		snap: &Snapshot{objects: map[Key]decoded{}},
	}
}

// Snapshot returns the current objects. It is safe for concurrent use.
func (s *Source) Snapshot() *Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap
}

// Errors returns the current problems, one per failing file.
func (s *Source) Errors() []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return errorsOf(s.files)
}

// Run loads the directory, sends Added for every object, then watches the
// directory and sends Added, Updated and Deleted as files change, until ctx
// is done. It fails only when the directory cannot be read or watched at
// all; problems in files are logged and reported by Errors.
func (s *Source) Run(ctx context.Context, out chan<- Event) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching %s: %w", s.dir, err)
	}
	defer w.Close()
	if err := w.Add(s.dir); err != nil {
		return fmt.Errorf("watching %s: %w", s.dir, err)
	}
	if err := s.reload(ctx, out); err != nil {
		return err
	}
	rescan := time.NewTicker(s.Rescan)
	defer rescan.Stop()
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return errors.New("file watcher closed")
			}
			s.logger.Debug("file event", "event", ev.String())
			debounce = time.After(s.Debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return errors.New("file watcher closed")
			}
			s.logger.Warn("file watcher error; rescanning", "err", err)
			debounce = time.After(s.Debounce)
		case <-debounce:
			debounce = nil
			if err := s.reload(ctx, out); err != nil {
				s.logger.Error("reloading config directory", "err", err)
			}
		case <-rescan.C:
			if err := s.reload(ctx, out); err != nil {
				s.logger.Error("reloading config directory", "err", err)
			}
		}
	}
}

// reload re-reads the directory and sends the differences.
func (s *Source) reload(ctx context.Context, out chan<- Event) error {
	s.mu.Lock()
	prevFiles, prevSnap := s.files, s.snap
	s.mu.Unlock()

	files, err := load(s.dir, prevFiles)
	if err != nil {
		return err
	}
	snap := snapshotOf(files)
	for f, st := range files {
		if st.err == nil {
			continue
		}
		if p, ok := prevFiles[f]; ok && p.err != nil && p.err.Error() == st.err.Error() {
			continue // already reported
		}
		s.logger.Error("config file rejected; keeping its previous objects", "file", f, "err", st.err)
	}
	s.mu.Lock()
	s.files, s.snap = files, snap
	s.mu.Unlock()

	for _, ev := range diff(prevSnap, snap) {
		select {
		case out <- ev:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

// diff lists the events that turn a into b, in key order.
func diff(a, b *Snapshot) []Event {
	var evs []Event
	for _, k := range b.sortedKeys() {
		nb := b.objects[k].obj
		na, ok := a.objects[k]
		switch {
		case !ok:
			evs = append(evs, Event{Type: Added, Key: k, Object: nb})
		case !sameObject(na.obj, nb):
			evs = append(evs, Event{Type: Updated, Key: k, Object: nb})
		}
	}
	for _, k := range a.sortedKeys() {
		if _, ok := b.objects[k]; !ok {
			evs = append(evs, Event{Type: Deleted, Key: k, Object: a.objects[k].obj})
		}
	}
	return evs
}

// sameObject compares two objects by their JSON form, which is what a user
// wrote; reflect.DeepEqual would see protobuf internals differ.
func sameObject(a, b Object) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(ja, jb)
}
