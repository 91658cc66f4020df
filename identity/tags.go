package identity

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Tag is one identity attribute of a PU.
type Tag struct {
	Key, Value string
}

func (t Tag) String() string { return t.Key + "=" + t.Value }

// Tags is a PU's identity: tags sorted by key, each key at most once.
// Build one with NewTags or ParseTags; the zero value is the empty identity.
type Tags []Tag

// NewTags builds Tags from a map.
func NewTags(m map[string]string) Tags {
	t := make(Tags, 0, len(m))
	for k, v := range m {
		t = append(t, Tag{k, v})
	}
	sort.Slice(t, func(i, j int) bool { return t[i].Key < t[j].Key })
	return t
}

// ParseTags parses "key=value" strings (spaces around key and value are
// trimmed). Keys must be unique and non-empty.
func ParseTags(kvs []string) (Tags, error) {
	m := make(map[string]string, len(kvs))
	for _, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		k = strings.TrimSpace(k)
		if !ok || k == "" {
			return nil, fmt.Errorf("tag %q: want key=value", kv)
		}
		if _, dup := m[k]; dup {
			return nil, fmt.Errorf("tag %q: key %q given twice", kv, k)
		}
		m[k] = strings.TrimSpace(v)
	}
	return NewTags(m), nil
}

// ErrUnsorted is returned by Validate for tags not sorted by unique keys.
var ErrUnsorted = errors.New("tags are not sorted by unique key")

// Validate checks the invariant (sorted, unique, non-empty keys); use it on
// tags that arrive from outside (tokens) before trusting binary search.
func (t Tags) Validate() error {
	for i := range t {
		if t[i].Key == "" {
			return errors.New("empty tag key")
		}
		if i > 0 && t[i-1].Key >= t[i].Key {
			return ErrUnsorted
		}
	}
	return nil
}

func (t Tags) find(key string) (int, bool) {
	i := sort.Search(len(t), func(i int) bool { return t[i].Key >= key })
	return i, i < len(t) && t[i].Key == key
}

// Has reports whether the key is present.
func (t Tags) Has(key string) bool { _, ok := t.find(key); return ok }

// Get returns the key's value, or "".
func (t Tags) Get(key string) string {
	v, _ := t.Lookup(key)
	return v
}

// Lookup returns the key's value and whether it is present.
func (t Tags) Lookup(key string) (string, bool) {
	if i, ok := t.find(key); ok {
		return t[i].Value, true
	}
	return "", false
}

// Map returns the tags as a map.
func (t Tags) Map() map[string]string {
	m := make(map[string]string, len(t))
	for _, tag := range t {
		m[tag.Key] = tag.Value
	}
	return m
}

// Strings returns the tags as "key=value" strings, in key order.
func (t Tags) Strings() []string {
	s := make([]string, len(t))
	for i, tag := range t {
		s[i] = tag.String()
	}
	return s
}

func (t Tags) String() string { return strings.Join(t.Strings(), ",") }

// Encode returns the tags as the exact "key=value" strings identity tokens
// carry (signed), refusing tags Decode would refuse: keys must be sorted,
// unique, non-empty and free of '='.
func (t Tags) Encode() ([]string, error) {
	if err := t.Validate(); err != nil {
		return nil, err
	}
	kvs := make([]string, len(t))
	for i, tag := range t {
		if strings.Contains(tag.Key, "=") {
			return nil, fmt.Errorf("tag key %q contains '='", tag.Key)
		}
		kvs[i] = tag.String()
	}
	return kvs, nil
}

// Decode is the inverse of Encode: exact "key=value" strings (nothing
// trimmed; the value is what follows the first '='), sorted by unique,
// non-empty key. Anything else is an error: the strings come from a peer.
func Decode(kvs []string) (Tags, error) {
	t := make(Tags, len(kvs))
	for i, kv := range kvs {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return nil, fmt.Errorf("tag %q: want key=value", kv)
		}
		t[i] = Tag{Key: k, Value: v}
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return t, nil
}
