package xdspart

import "testing"

func TestMore(t *testing.T) {
	for _, tc := range []struct {
		nonce string
		more  bool
	}{
		{"7", false},
		{"", false},
		{Nonce("7", 1), true},
		{Nonce("12", 30), true},
		{"7+part", false},
		{"7+partx", false},
		{"3f2b6c1e-8a1d-4c7e-9f00-0d5e2c7b9a11", false}, // a UUID nonce, as istiod's
		{"7.1", false},
	} {
		if got := More(tc.nonce); got != tc.more {
			t.Errorf("More(%q) = %v, want %v", tc.nonce, got, tc.more)
		}
	}
}
