package dnsname

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/validation"
)

// TestAgreesWithKubernetes: the same verdict as apimachinery's checks for
// a table of names (the test may import it; the data plane may not).
func TestAgreesWithKubernetes(t *testing.T) {
	for _, s := range []string{
		"", "a", "demo", "my-app", "-a", "a-", "a--b", "A", "a_b", "a.b", ".a", "a.", "a..b",
		"0", "9abc", "a.b-c.d", "a.-b", "a-.b", "ünï", "a b", "x" + strings.Repeat("y", 62), strings.Repeat("y", 64),
		strings.Repeat("a.", 126) + "a", strings.Repeat("a.", 127) + "a", strings.Repeat("b", 100) + ".c",
	} {
		if got, want := Label(s) == nil, len(validation.IsDNS1123Label(s)) == 0; got != want {
			t.Errorf("Label(%q) valid %v, Kubernetes says %v (%v)", s, got, want, Label(s))
		}
		if got, want := Subdomain(s) == nil, len(validation.IsDNS1123Subdomain(s)) == 0; got != want {
			t.Errorf("Subdomain(%q) valid %v, Kubernetes says %v (%v)", s, got, want, Subdomain(s))
		}
	}
}

func FuzzAgreesWithKubernetes(f *testing.F) {
	for _, s := range []string{"a", "a.b", "-", "a-b.c"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := Label(s) == nil, len(validation.IsDNS1123Label(s)) == 0; got != want {
			t.Fatalf("Label(%q) valid %v, Kubernetes says %v", s, got, want)
		}
		if got, want := Subdomain(s) == nil, len(validation.IsDNS1123Subdomain(s)) == 0; got != want {
			t.Fatalf("Subdomain(%q) valid %v, Kubernetes says %v", s, got, want)
		}
	})
}
