package policy

import (
	"errors"
	"fmt"
	"sort"
	"strings"
)

// SysPrefix starts the keys of system tags (@sys:image, @sys:name, ...),
// which trireme sets itself; users cannot set them with labels.
const SysPrefix = "@sys:"

// Tag is one identity attribute of a PU.
type Tag struct {
	Key, Value string
}

func (t Tag) String() string { return t.Key + "=" + t.Value }

// Tags is a PU's identity: tags sorted by key, each key at most once.
// Build one with NewTags or ParseTags; the zero value is the empty identity.
// Tags implements labels.Labels so that selectors can match it.
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

// ParseTags parses "key=value" strings. Keys must be unique and non-empty.
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

// labelKey maps a key as apimachinery's selectors see it (reserved keys
// encoded, see selector.go) to the tag key.
func labelKey(key string) string {
	if strings.HasPrefix(key, "@") {
		return key
	}
	return decodeKey(key)
}

// Has reports whether the key is present (labels.Labels). Encoded reserved
// keys are decoded first, so apimachinery selectors match reserved tags.
func (t Tags) Has(key string) bool { _, ok := t.find(labelKey(key)); return ok }

// Get returns the key's value, or "" (labels.Labels).
func (t Tags) Get(key string) string {
	if i, ok := t.find(labelKey(key)); ok {
		return t[i].Value
	}
	return ""
}

// Lookup returns the key's value and whether it is present (labels.Labels).
func (t Tags) Lookup(key string) (string, bool) {
	if i, ok := t.find(labelKey(key)); ok {
		return t[i].Value, true
	}
	return "", false
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
