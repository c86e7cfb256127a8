package logbuf

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

type syncBuf struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
	err    error
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.writes++
	if s.err != nil {
		return 0, s.err
	}
	return s.b.Write(p)
}

func (s *syncBuf) state() (string, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String(), s.writes
}

func TestWriter(t *testing.T) {
	cases := []struct {
		name       string
		max        int
		records    []string
		wait       time.Duration // before looking
		close      bool
		wantOut    string
		wantWrites int
	}{
		{name: "held until the delay", max: 1 << 10, records: []string{"a\n", "b\n"}, wantOut: "", wantWrites: 0},
		{name: "one write after the delay", max: 1 << 10, records: []string{"a\n", "b\n", "c\n"}, wait: 150 * time.Millisecond, wantOut: "a\nb\nc\n", wantWrites: 1},
		{name: "a full buffer flushes at once", max: 4, records: []string{"ab\n", "cd\n", "e\n"}, wantOut: "ab\ncd\n", wantWrites: 1},
		{name: "records are never split", max: 3, records: []string{"abcdef\n"}, wantOut: "abcdef\n", wantWrites: 1},
		{name: "close flushes", max: 1 << 10, records: []string{"a\n"}, close: true, wantOut: "a\n", wantWrites: 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var out syncBuf
			w := New(&out, 50*time.Millisecond, tc.max)
			for _, r := range tc.records {
				if n, err := w.Write([]byte(r)); n != len(r) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", r, n, err)
				}
			}
			if tc.close {
				if err := w.Close(); err != nil {
					t.Fatal(err)
				}
			}
			time.Sleep(tc.wait)
			got, writes := out.state()
			if got != tc.wantOut || writes != tc.wantWrites {
				t.Errorf("out %q in %d writes, want %q in %d", got, writes, tc.wantOut, tc.wantWrites)
			}
			w.Close()
		})
	}
}

func TestWriteAfterCloseGoesThrough(t *testing.T) {
	var out syncBuf
	w := New(&out, time.Hour, 0)
	w.Close()
	w.Write([]byte("late\n"))
	if got, _ := out.state(); got != "late\n" {
		t.Errorf("got %q", got)
	}
}

func TestErrorReported(t *testing.T) {
	out := &syncBuf{err: errors.New("disk full")}
	w := New(out, time.Hour, 0)
	w.Write([]byte("x\n"))
	if err := w.Flush(); err == nil || !strings.Contains(err.Error(), "disk full") {
		t.Errorf("Flush: %v", err)
	}
}

func TestConcurrentRecordsStayWhole(t *testing.T) {
	var out syncBuf
	w := New(&out, time.Millisecond, 256)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 500; i++ {
				w.Write([]byte("0123456789abcdef\n"))
			}
		}()
	}
	wg.Wait()
	w.Close()
	got, _ := out.state()
	lines := strings.Split(strings.TrimSuffix(got, "\n"), "\n")
	if len(lines) != 4000 {
		t.Fatalf("%d lines, want 4000", len(lines))
	}
	for _, l := range lines {
		if l != "0123456789abcdef" {
			t.Fatalf("torn record %q", l)
		}
	}
}
