package monitor

import (
	"strings"
	"testing"

	"github.com/trireme-go/trireme/identity"
)

// Whatever labels a workload carries, its tags are valid, carry every
// system tag with the monitor's value, and no user tag is reserved or
// unsignable.
func FuzzBuildTags(f *testing.F) {
	f.Add("app", "web", "@sys:name", "db")
	f.Add("", "", "a=b", "c")
	f.Add("@", "x", "k8s.io/name", "v=w")
	f.Add(" ", "\x00", "@sys:id", "")
	f.Add("app", "web\nteam=blue", "a\x00b", "x")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		sys := SysTags(KindDocker, "id1", "name1", "img")
		tags := BuildTags(nil, "pu", map[string]string{k1: v1, k2: v2}, sys)
		if err := tags.Validate(); err != nil {
			t.Fatalf("invalid tags %v: %v", tags, err)
		}
		for k, v := range sys {
			if got, ok := tags.Lookup(k); !ok || got != v {
				t.Fatalf("system tag %s=%q, want %q", k, got, v)
			}
		}
		for _, tag := range tags {
			if identity.IsReserved(tag.Key) {
				if _, isSys := sys[tag.Key]; !isSys {
					t.Fatalf("reserved user tag %v", tag)
				}
			}
			if strings.Contains(tag.Key, "=") || strings.TrimSpace(tag.Key) == "" {
				t.Fatalf("unsignable key %q", tag.Key)
			}
			if _, isSys := sys[tag.Key]; !isSys {
				if err := identity.CheckLabel(tag.Key, tag.Value, false); err != nil {
					t.Fatalf("user tag %q=%q kept although identity.CheckLabel refuses it: %v", tag.Key, tag.Value, err)
				}
				if strings.ContainsAny(tag.Key+tag.Value, "\x00\n\r") {
					t.Fatalf("user tag %q=%q carries a control character", tag.Key, tag.Value)
				}
			}
		}
	})
}
