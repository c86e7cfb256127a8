package ztunnel

import (
	"context"
	"fmt"
	"io"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/nsnet"
)

// sized serves, inside a namespace, connections that read exactly req
// bytes and answer resp bytes.
func sized(t *testing.T, ns, addr string, req, resp int) {
	t.Helper()
	l, err := nsnet.Listen(context.Background(), ns, addr, nsnet.SocketOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := io.ReadFull(c, make([]byte, req)); err != nil {
					return
				}
				c.Write(make([]byte, resp))
			}()
		}
	}()
}

// metricSum adds up a counter's values for one reporter.
func metricSum(t *testing.T, m *Metrics, name, reporter string) int64 {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	var sum int64
	for _, l := range strings.Split(rec.Body.String(), "\n") {
		if strings.HasPrefix(l, name+"{") && strings.Contains(l, `reporter="`+reporter+`"`) {
			v, err := strconv.ParseFloat(l[strings.LastIndexByte(l, ' ')+1:], 64)
			if err != nil {
				t.Fatalf("metric line %q: %v", l, err)
			}
			sum += int64(v)
		}
	}
	return sum
}

// TestByteDirections sends known byte counts over every path and checks
// both byte counters and the access log (the one connection record): the
// metrics count the client's bytes as received and the answer as sent for
// both reporters; the log's bytes_sent is the reporter's own workload's
// (the client's on outbound, the destination's on inbound), as upstream.
func TestByteDirections(t *testing.T) {
	const req, resp = 1000, 5000
	for _, tc := range []struct {
		name     string
		from, to string
		port     string
		node     string // whose ztunnel reports
		reporter string
		logKV    map[string]string
	}{
		{"outbound over HBONE", "a", "b", "9401", "node1", "source", map[string]string{"direction": "outbound", "route": "hbone"}},
		{"HBONE inbound", "a", "b", "9402", "node2", "destination", map[string]string{"direction": "inbound"}},
		{"plaintext inbound", "c", "b", "9403", "node2", "destination", map[string]string{"direction": "inbound"}},
		{"outbound to a pod outside the mesh", "a", "c", "9404", "node1", "source", map[string]string{"direction": "outbound", "route": "tcp"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMesh(t)
			sized(t, m.pods[tc.to], ":"+tc.port, req, resp)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c, err := nsnet.DialFunc(m.pods[tc.from], nsnet.SocketOptions{}, nil)(ctx, "tcp", m.ips[tc.to]+":"+tc.port)
			if err != nil {
				t.Fatal(err)
			}
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write(make([]byte, req)); err != nil {
				t.Fatal(err)
			}
			n, err := io.Copy(io.Discard, c)
			c.Close()
			if err != nil || n != resp {
				t.Fatalf("answer: %d bytes, %v", n, err)
			}
			kv := map[string]string{"msg": "connection complete", "dst.workload": tc.to}
			for k, v := range tc.logKV {
				kv[k] = v
			}
			rec := m.logs[tc.node].waitFor(t, kv)
			wantSent, wantRecv := resp, req
			if tc.reporter == "source" {
				wantSent, wantRecv = req, resp
			}
			if fmt.Sprint(rec["bytes_sent"]) != fmt.Sprint(wantSent) || fmt.Sprint(rec["bytes_recv"]) != fmt.Sprint(wantRecv) {
				t.Errorf("log: bytes_sent %v bytes_recv %v, want %d %d", rec["bytes_sent"], rec["bytes_recv"], wantSent, wantRecv)
			}
			met := m.met[tc.node]
			if got := metricSum(t, met, "istio_tcp_received_bytes_total", tc.reporter); got != req {
				t.Errorf("istio_tcp_received_bytes_total = %d, want %d (the client's bytes)", got, req)
			}
			if got := metricSum(t, met, "istio_tcp_sent_bytes_total", tc.reporter); got != resp {
				t.Errorf("istio_tcp_sent_bytes_total = %d, want %d (the answer)", got, resp)
			}
		})
	}
}
