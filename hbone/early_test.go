package hbone

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"
)

// TestDialEarly checks the first bytes sent with the CONNECT: they reach
// the handler's stream once it accepts, ahead of and in order with what
// follows; they go out after the 200 when they do not fit one frame; a
// refused CONNECT never hands them to anyone.
func TestDialEarly(t *testing.T) {
	cases := []struct {
		name   string
		early  int
		later  int
		refuse bool
	}{
		{name: "small request with the CONNECT", early: 300, later: 0},
		{name: "early bytes then more", early: 4096, later: 100 << 10},
		{name: "too big for one frame: sent after the 200", early: 40 << 10, later: 10},
		{name: "refused: early bytes discarded", early: 300, refuse: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			noLeaks(t)
			got := make(chan []byte, 1)
			e, k := handlerEnv(t, func(_ context.Context, r *Request) {
				if tc.refuse {
					r.Refuse(http.StatusUnauthorized, "denied")
					got <- nil
					return
				}
				time.Sleep(20 * time.Millisecond) // the early bytes wait in the stream
				c, err := r.Accept(nil)
				if err != nil {
					got <- nil
					return
				}
				defer c.Close()
				b, _ := io.ReadAll(c)
				got <- b
				c.CloseWrite()
			})
			want := bytes.Repeat([]byte("0123456789abcdefghij"), (tc.early+tc.later)/20+1)[:tc.early+tc.later]
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c, err := e.pool.DialEarly(ctx, k, "10.244.1.5:8080", nil, want[:tc.early])
			if tc.refuse {
				var se *StatusError
				if !errors.As(err, &se) || se.Code != http.StatusUnauthorized {
					t.Fatalf("DialEarly: %v, want a 401 StatusError", err)
				}
				if b := <-got; b != nil {
					t.Errorf("refused handler saw %d bytes", len(b))
				}
				return
			}
			if err != nil {
				t.Fatalf("DialEarly: %v", err)
			}
			defer c.Close()
			if _, err := c.Write(want[tc.early:]); err != nil {
				t.Fatal(err)
			}
			c.CloseWrite()
			select {
			case b := <-got:
				if !bytes.Equal(b, want) {
					t.Errorf("handler read %d bytes, not the %d sent in order", len(b), len(want))
				}
			case <-time.After(10 * time.Second):
				t.Fatal("handler never finished")
			}
		})
	}
}
