package clustertest

import (
	"net"
	"testing"

	"golang.org/x/net/dns/dnsmessage"
)

func TestDNSAnswer(t *testing.T) {
	d := &dnsServer{names: map[string]net.IP{"istiod.istio-system.svc.cluster.local.": net.IPv4(10, 96, 0, 10).To4()}}
	ask := func(name string, typ dnsmessage.Type) dnsmessage.Message {
		t.Helper()
		q, err := (&dnsmessage.Message{Header: dnsmessage.Header{ID: 7, RecursionDesired: true},
			Questions: []dnsmessage.Question{{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET}}}).Pack()
		if err != nil {
			t.Fatal(err)
		}
		var m dnsmessage.Message
		if err := m.Unpack(d.answer(q)); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return m
	}
	m := ask("istiod.istio-system.svc.cluster.local.", dnsmessage.TypeA)
	if m.ID != 7 || m.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 1 || m.Answers[0].Body.(*dnsmessage.AResource).A != [4]byte{10, 96, 0, 10} {
		t.Errorf("A: %+v", m)
	}
	if m := ask("IstioD.istio-system.svc.cluster.local.", dnsmessage.TypeAAAA); m.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 0 {
		t.Errorf("AAAA: %+v", m)
	}
	if m := ask("example.com.", dnsmessage.TypeA); m.RCode != dnsmessage.RCodeNameError || len(m.Answers) != 0 {
		t.Errorf("unknown name: %+v", m)
	}
}
