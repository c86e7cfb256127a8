package local

import (
	"testing"
	"time"
)

func TestRestartBackoff(t *testing.T) {
	b := restartBackoff{min: 200 * time.Millisecond, max: 2 * time.Second, healthyAfter: 10 * time.Second}
	for i, step := range []struct {
		ran, want time.Duration
	}{
		{0, 200 * time.Millisecond}, // first crash
		{time.Second, 400 * time.Millisecond},
		{time.Second, 800 * time.Millisecond},
		{time.Second, 1600 * time.Millisecond},
		{time.Second, 2 * time.Second}, // capped
		{time.Second, 2 * time.Second},
		{10 * time.Second, 200 * time.Millisecond}, // a healthy run resets it
		{time.Second, 400 * time.Millisecond},
		{5 * time.Minute, 200 * time.Millisecond},
		{9 * time.Second, 400 * time.Millisecond}, // not quite healthy
	} {
		if got := b.after(step.ran); got != step.want {
			t.Fatalf("step %d (ran %s): wait %s, want %s", i, step.ran, got, step.want)
		}
	}
}
