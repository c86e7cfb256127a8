package filesource

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/ambit-mesh/ambit/controlplane/config"
)

// The event vocabulary is the neutral one of package config; these
// aliases keep this package's code and tests short. Other packages use the
// config names.
type (
	// EventType is config.EventType.
	EventType = config.EventType
	// Event is config.Event. For Deleted, Object is the last known version.
	Event = config.Event
)

// The event types (config's).
const (
	Added   = config.Added
	Updated = config.Updated
	Deleted = config.Deleted
)

// Source watches a directory of manifests.
type Source struct {
	dir    string
	logger *slog.Logger

	// Debounce is how long Run waits after a file system event before
	// reloading, so that an editor's burst of writes becomes one reload.
	// Set it before calling Run.
	Debounce time.Duration
	// Rescan is the period of a full reload that catches what file system
	// events missed (e.g. on network file systems). Set it before Run.
	Rescan time.Duration

	running atomic.Bool
	synced  atomic.Bool // the initial events of the current Run were sent
	dec     *decoder    // used only by the goroutine in Run

	mu     sync.Mutex
	files  map[string]*fileState
	dirErr error // the directory itself could not be read
	snap   *Snapshot

	errsChanged chan struct{} // capacity 1: a pending "Errors changed"
}

// New returns a Source for dir. Nothing is read until Run. A nil logger
// discards log output.
func New(dir string, logger *slog.Logger) *Source {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Source{
		dir: dir, logger: logger.With("source", dir),
		Debounce: 100 * time.Millisecond, Rescan: 10 * time.Second,
		dec:         newDecoder(),
		snap:        newSnapshot(nil),
		errsChanged: make(chan struct{}, 1),
	}
}

// Snapshot returns the current objects. It is safe for concurrent use; the
// Snapshot and its objects must not be modified.
func (s *Source) Snapshot() *Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap
}

// Errors returns the current problems: one error per failing file (joining
// that file's *Error values, see the Errors function), sorted by file name,
// and first the directory's own problem if it cannot be read. It is empty
// when every file loaded. It is safe for concurrent use.
func (s *Source) Errors() []error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.errorsLocked()
}

func (s *Source) errorsLocked() []error {
	errs := errorsOf(s.files)
	if s.dirErr != nil {
		errs = append([]error{s.dirErr}, errs...)
	}
	return errs
}

// ErrorsChanged returns a channel that receives a value after a reload
// changed what Errors returns: a file was rejected, fixed or removed while
// broken, its problem changed, or the directory became unreadable or
// readable again. Values do not queue up (one receive may stand for several
// changes), so call Errors after each receive for the current problems.
// There should be one receiver.
func (s *Source) ErrorsChanged() <-chan struct{} { return s.errsChanged }

// notifyErrors signals ErrorsChanged without blocking.
func (s *Source) notifyErrors() {
	select {
	case s.errsChanged <- struct{}{}:
	default: // a signal is already pending
	}
}

// errorTexts is the text of each error, to compare two lists.
func errorTexts(errs []error) []string {
	out := make([]string, len(errs))
	for i, err := range errs {
		out[i] = err.Error()
	}
	return out
}

// HasSynced reports whether Run has sent the events of its initial load
// (config.Syncer).
func (s *Source) HasSynced() bool { return s.synced.Load() }

// Run loads the directory, sends Added for every object, then watches the
// directory and sends Added, Updated and Deleted as files change, until ctx
// is done; then it returns nil. It fails only when the directory cannot be
// read or watched at the start; problems in files are logged and reported
// by Errors, and ErrorsChanged signals when they change. Run may be called
// only once at a time.
func (s *Source) Run(ctx context.Context, out chan<- Event) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("filesource: Run is already running")
	}
	defer s.running.Store(false)
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watching config directory %s: %w", s.dir, err)
	}
	defer w.Close()
	if err := w.Add(s.dir); err != nil {
		return fmt.Errorf("watching config directory %s: %w", s.dir, err)
	}
	if err := s.reload(ctx, out, true); err != nil {
		return err
	}
	s.synced.Store(ctx.Err() == nil)
	defer s.synced.Store(false)
	debounce, rescan := s.Debounce, s.Rescan
	if debounce <= 0 {
		debounce = time.Millisecond
	}
	if rescan <= 0 {
		rescan = 10 * time.Second
	}
	ticker := time.NewTicker(rescan)
	defer ticker.Stop()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	var pendingSince time.Time // zero when no reload is pending
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return fmt.Errorf("watching config directory %s: watcher closed", s.dir)
			}
			s.logger.Debug("file event", "event", ev.String())
			// Wait for quiet, but never postpone a reload by more than ten
			// debounce periods under a steady stream of events.
			now := time.Now()
			if pendingSince.IsZero() {
				pendingSince = now
			}
			if now.Sub(pendingSince) < 10*debounce {
				timer.Reset(debounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return fmt.Errorf("watching config directory %s: watcher closed", s.dir)
			}
			s.logger.Warn("file watcher error; rescanning", "err", err)
			if pendingSince.IsZero() {
				pendingSince = time.Now()
			}
			timer.Reset(debounce)
		case <-timer.C:
			pendingSince = time.Time{}
			s.reloadLogged(ctx, out)
		case <-ticker.C:
			if len(w.WatchList()) == 0 {
				// The directory was removed (and maybe re-created): watch again.
				if err := w.Add(s.dir); err == nil {
					s.logger.Info("watching config directory again")
				}
			}
			s.reloadLogged(ctx, out)
		}
	}
}

func (s *Source) reloadLogged(ctx context.Context, out chan<- Event) {
	if err := s.reload(ctx, out, false); err != nil {
		s.mu.Lock()
		repeated := s.dirErr != nil && s.dirErr.Error() == err.Error()
		s.dirErr = err
		s.mu.Unlock()
		if !repeated {
			s.logger.Error("cannot reload config directory; keeping the loaded objects", "err", err)
			s.notifyErrors()
		}
	}
}

// reload re-reads the directory and sends the differences; the initial
// reload of a Run sends every object as Added and logs every problem.
func (s *Source) reload(ctx context.Context, out chan<- Event, initial bool) error {
	s.mu.Lock()
	prevFiles, prevSnap := s.files, s.snap
	s.mu.Unlock()
	if initial {
		prevSnap = newSnapshot(nil)
	}

	files, snap, err := load(s.dir, prevFiles, s.dec)
	if err != nil {
		return err
	}
	for _, f := range slices.Sorted(maps.Keys(files)) {
		st, p := files[f], prevFiles[f]
		switch {
		case st.err == nil && p != nil && p.err != nil:
			s.logger.Info("config file fixed", "file", f)
		case st.err == nil:
		case !initial && p != nil && p.err != nil && p.err.Error() == st.err.Error():
			// already reported
		default:
			s.logger.Error("config file rejected; keeping its previous objects", "file", f, "err", st.err)
		}
	}
	s.mu.Lock()
	if s.dirErr != nil {
		s.logger.Info("config directory readable again")
	}
	before := errorTexts(s.errorsLocked())
	s.files, s.snap, s.dirErr = files, snap, nil
	changed := !slices.Equal(before, errorTexts(s.errorsLocked()))
	s.mu.Unlock()
	if changed {
		s.notifyErrors()
	}

	for _, ev := range diff(prevSnap, snap) {
		select {
		case out <- ev:
		case <-ctx.Done():
			return nil
		}
	}
	return nil
}

// diff lists the events that turn a into b, in key order. An object that
// moved to another file is Updated even when it is otherwise the same.
func diff(a, b *Snapshot) []Event {
	var evs []Event
	for _, k := range b.keys {
		nb := b.objects[k]
		na, ok := a.objects[k]
		switch {
		case !ok:
			evs = append(evs, Event{Type: Added, Key: k, Object: nb.obj})
		case na.file != nb.file || !sameObject(na.obj, nb.obj):
			evs = append(evs, Event{Type: Updated, Key: k, Object: nb.obj})
		}
	}
	for _, k := range a.keys {
		if _, ok := b.objects[k]; !ok {
			evs = append(evs, Event{Type: Deleted, Key: k, Object: a.objects[k].obj})
		}
	}
	return evs
}

// sameObject compares two objects by their JSON form, which is what a user
// wrote; reflect.DeepEqual would see protobuf internals differ. Objects of a
// file whose bytes did not change are the same pointers.
func sameObject(a, b Object) bool {
	if a == b {
		return true
	}
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(ja, jb)
}
