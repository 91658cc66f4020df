package identity

import (
	"errors"
	"slices"
	"strings"
	"testing"
)

func TestParseTags(t *testing.T) {
	for _, c := range []struct {
		in   []string
		want Tags
		err  string // substring of the error; "" = no error
	}{
		{nil, Tags{}, ""},
		{[]string{"app=web"}, Tags{{Key: "app", Value: "web"}}, ""},
		{[]string{"z=1", "a=2"}, Tags{{Key: "a", Value: "2"}, {Key: "z", Value: "1"}}, ""},
		{[]string{" app = web "}, Tags{{Key: "app", Value: "web"}}, ""},
		{[]string{"app="}, Tags{{Key: "app", Value: ""}}, ""},
		{[]string{"k=a=b"}, Tags{{Key: "k", Value: "a=b"}}, ""},
		{[]string{"@sys:name=/web"}, Tags{{Key: "@sys:name", Value: "/web"}}, ""},
		{[]string{"app"}, nil, "want key=value"},
		{[]string{"=web"}, nil, "want key=value"},
		{[]string{" =web"}, nil, "want key=value"},
		{[]string{"app=web", "app=db"}, nil, "given twice"},
		{[]string{"app=web", " app=db"}, nil, "given twice"},
	} {
		got, err := ParseTags(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("ParseTags(%q) error %v, want %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("ParseTags(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
}

func TestTagsValidate(t *testing.T) {
	for _, c := range []struct {
		tags Tags
		ok   bool
	}{
		{nil, true},
		{Tags{{Key: "a", Value: ""}}, true},
		{Tags{{Key: "a"}, {Key: "b"}}, true},
		{Tags{{Key: "", Value: "x"}}, false},
		{Tags{{Key: "b"}, {Key: "a"}}, false},
		{Tags{{Key: "a"}, {Key: "a"}}, false},
	} {
		err := c.tags.Validate()
		if (err == nil) != c.ok {
			t.Errorf("%v: Validate() = %v, want ok=%v", c.tags, err, c.ok)
		}
	}
	if err := (Tags{{Key: "b"}, {Key: "a"}}).Validate(); !errors.Is(err, ErrUnsorted) {
		t.Errorf("unsorted: %v, want ErrUnsorted", err)
	}
}

func TestTagsLookup(t *testing.T) {
	tags := NewTags(map[string]string{"app": "web", "@sys:name": "/web", "empty": ""})
	for _, c := range []struct {
		key, val string
		ok       bool
	}{
		{"app", "web", true},
		{"@sys:name", "/web", true},
		{"empty", "", true},
		{"missing", "", false},
		{"", "", false},
	} {
		v, ok := tags.Lookup(c.key)
		if v != c.val || ok != c.ok || tags.Has(c.key) != c.ok || tags.Get(c.key) != c.val {
			t.Errorf("Lookup(%q) = %q, %v; want %q, %v", c.key, v, ok, c.val, c.ok)
		}
	}
	if got, want := tags.String(), "@sys:name=/web,app=web,empty="; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}

func TestCheckLabel(t *testing.T) {
	for _, c := range []struct {
		key, value string
		reserved   bool
		err        string // substring; "" = valid
	}{
		{"app", "web", false, ""},
		{"k8s.io/name", "", false, ""},
		{"app", "héllo wörld", false, ""},
		{"@sys:namespace", "prod", true, ""},
		{"@sys:name", "x", false, "reserved"},
		{"@", "x", false, "reserved"},
		{"", "x", false, "empty key"},
		{"  ", "x", true, "empty key"},
		{"a=b", "x", false, "contains '='"},
		{"a=b", "x", true, "contains '='"},
		{strings.Repeat("k", MaxKey), "x", false, ""},
		{strings.Repeat("k", MaxKey+1), "x", false, "at most"},
		{"app", strings.Repeat("v", MaxValue), false, ""},
		{"app", strings.Repeat("v", MaxValue+1), false, "at most"},
		{"app", "web\nteam=blue", false, "control character"},
		{"a\x00b", "x", false, "control character"},
		{"app", "\x7f", false, "control character"},
		{"app", "\u0085", false, "control character"},
		{"app", "\xff", false, "not UTF-8"},
		{"\xc3", "x", false, "not UTF-8"},
	} {
		err := CheckLabel(c.key, c.value, c.reserved)
		if c.err == "" && err != nil {
			t.Errorf("CheckLabel(%q, %q, %v) = %v, want nil", c.key, c.value, c.reserved, err)
		}
		if c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("CheckLabel(%q, %q, %v) = %v, want %q", c.key, c.value, c.reserved, err, c.err)
		}
	}
}

func TestReserved(t *testing.T) {
	for key, want := range map[string]bool{
		"@sys:image": true, "@ns:team": true, "@": true,
		"app": false, "": false, "a@b": false, " @x": false,
	} {
		if IsReserved(key) != want {
			t.Errorf("IsReserved(%q) = %v", key, !want)
		}
	}
	got := UserLabels(map[string]string{"@sys:id": "1", "@ns:team": "a", "app": "web", "a@b": "c"})
	if len(got) != 2 || got["app"] != "web" || got["a@b"] != "c" {
		t.Errorf("UserLabels = %v, want app and a@b only", got)
	}
}

// An Identity finds each of its tags, by symbols, and only those; a repeated
// key keeps its first value.
func TestIdentityValue(t *testing.T) {
	id := New(Tags{{Key: "b", Value: "2"}, {Key: "a", Value: "1"}, {Key: "a", Value: "x"}})
	if got := id.Tags(); !slices.Equal(got, Tags{{Key: "a", Value: "1"}, {Key: "b", Value: "2"}}) {
		t.Fatalf("Tags() = %v", got)
	}
	if len(id.Pairs()) != 2 {
		t.Fatalf("%d pairs, want 2", len(id.Pairs()))
	}
	for _, tag := range id.Tags() {
		k, v := Acquire(tag.Key), Acquire(tag.Value)
		got, ok := id.Value(k)
		if !ok || got != v {
			t.Errorf("Value(%s) = %d, %v; want %d", tag.Key, got, ok, v)
		}
		Hold(&k, []uint32{k, v})
	}
	if _, ok := id.Value(Acquire("not-a-key-of-this-identity")); ok {
		t.Error("Value of a foreign key found")
	}
	if !Interned("a") || !Interned("2") {
		t.Error("held symbols not interned")
	}
}

// Whatever the input, ParseTags returns valid tags whose every input key is
// found, or a named error; never a panic.
func FuzzParseTags(f *testing.F) {
	f.Add("app=web", "env=prod")
	f.Add("app", "=x")
	f.Add(" a = b ", "a=c")
	f.Add("@sys:id=1", "k=v=w")
	f.Fuzz(func(t *testing.T, a, b string) {
		tags, err := ParseTags([]string{a, b})
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		if err := tags.Validate(); err != nil {
			t.Fatalf("ParseTags(%q, %q) = %v: %v", a, b, tags, err)
		}
		for _, kv := range []string{a, b} {
			k, v, _ := strings.Cut(kv, "=")
			got, ok := tags.Lookup(strings.TrimSpace(k))
			if !ok || got != strings.TrimSpace(v) {
				t.Fatalf("%q: Lookup = %q, %v", kv, got, ok)
			}
		}
		if again, err := ParseTags(tags.Strings()); err != nil || !slices.Equal(again, tags) {
			t.Fatalf("round trip of %v: %v, %v", tags, again, err)
		}
	})
}

// The signed form: what Encode writes Decode reads back exactly; anything
// not sorted, unique, non-empty or without '=' is refused both ways.
func TestEncodeDecode(t *testing.T) {
	for _, c := range []struct {
		kvs []string
		ok  bool
	}{
		{[]string{}, true},
		{[]string{"@sys:id=1", "app=web"}, true},
		{[]string{"a= spaced value ", "b=x=y", "c="}, true},
		{[]string{"app=web", "@sys:id=1"}, false}, // unsorted
		{[]string{"a=1", "a=2"}, false},           // a key twice
		{[]string{"=x"}, false},                   // empty key
		{[]string{"novalue"}, false},
	} {
		tags, err := Decode(c.kvs)
		if (err == nil) != c.ok {
			t.Errorf("Decode(%q) = %v, %v; want ok=%v", c.kvs, tags, err, c.ok)
			continue
		}
		if !c.ok {
			continue
		}
		if back, err := tags.Encode(); err != nil || !slices.Equal(back, c.kvs) {
			t.Errorf("Encode(Decode(%q)) = %q, %v", c.kvs, back, err)
		}
	}
	for _, bad := range []Tags{{{Key: "b"}, {Key: "a"}}, {{Key: ""}}, {{Key: "a=b", Value: "c"}}} {
		if kvs, err := bad.Encode(); err == nil {
			t.Errorf("Encode(%v) = %q, want an error", bad, kvs)
		}
	}
}

// Whatever a peer sends, Decode returns valid tags that encode back to the
// same strings, or an error; never a panic.
func FuzzDecode(f *testing.F) {
	f.Add("a=1", "b=2")
	f.Add("b=2", "a=1")
	f.Add("=", "x")
	f.Add("k=v=w", "k=")
	f.Fuzz(func(t *testing.T, a, b string) {
		kvs := []string{a, b}
		tags, err := Decode(kvs)
		if err != nil {
			return
		}
		if err := tags.Validate(); err != nil {
			t.Fatalf("Decode(%q) = invalid %v: %v", kvs, tags, err)
		}
		if back, err := tags.Encode(); err != nil || !slices.Equal(back, kvs) {
			t.Fatalf("Encode(Decode(%q)) = %q, %v", kvs, back, err)
		}
	})
}
