package policy

import (
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
)

// Operator is the operator of one selector requirement. The string form's
// "=", "==" and "in" are OpIn; "!=" and "notin" are OpNotIn; "key" is
// OpExists and "!key" is OpDoesNotExist.
type Operator uint8

const (
	OpIn           Operator = iota // key present with one of Values
	OpNotIn                        // key absent, or present with a value not in Values
	OpExists                       // key present
	OpDoesNotExist                 // key absent
)

var opNames = [...]string{"In", "NotIn", "Exists", "DoesNotExist"}

func (o Operator) String() string {
	if int(o) < len(opNames) {
		return opNames[o]
	}
	return "Operator(?)"
}

// Requirement is one term of a selector; a selector is the conjunction of its
// requirements. Keys are tag keys as PUs carry them (reserved keys decoded,
// e.g. "@sys:image"); Values are sorted and unique.
type Requirement struct {
	Key    string
	Op     Operator
	Values []string
}

// Matches reports whether tags satisfy the requirement.
func (r Requirement) Matches(tags Tags) bool {
	v, ok := tags.Lookup(r.Key)
	switch r.Op {
	case OpIn:
		return ok && containsString(r.Values, v)
	case OpNotIn:
		return !ok || !containsString(r.Values, v)
	case OpExists:
		return ok
	case OpDoesNotExist:
		return !ok
	}
	return false
}

func containsString(sorted []string, v string) bool {
	i := sort.SearchStrings(sorted, v)
	return i < len(sorted) && sorted[i] == v
}

// Selector is a Kubernetes label selector over tags, kept with the text it was
// written as, for messages and `policy explain`.
//
// The embedded labels.Selector is apimachinery's own matcher (over encoded
// reserved keys; Tags decodes them on lookup); the engine compiles the decoded
// Requirements instead.
type Selector struct {
	labels.Selector
	Text string
	reqs []Requirement
}

// Requirements returns the selector's terms (decoded keys). None means the
// selector matches every tag set.
func (s *Selector) Requirements() []Requirement { return s.reqs }

// MatchesTags reports whether the selector matches tags, by the decoded
// requirements (the semantics the engine compiles).
func (s *Selector) MatchesTags(tags Tags) bool {
	for _, r := range s.reqs {
		if !r.Matches(tags) {
			return false
		}
	}
	return true
}

func (s *Selector) String() string { return s.Text }

// everything is the text of the selector that matches every tag set.
const everything = "*"

// ParseSelector parses the Kubernetes string form of a label selector
// ("app=web, env in (prod,staging), tier!=db, !legacy"). Keys may be reserved
// keys such as "@sys:image". "" and "*" match every tag set. The numeric
// operators gt/lt are not supported.
func ParseSelector(text string) (*Selector, error) {
	t := strings.TrimSpace(text)
	if t == "" || t == everything {
		return &Selector{Selector: labels.Everything(), Text: everything}, nil
	}
	enc, back, err := encodeKeysInText(t)
	if err != nil {
		return nil, err
	}
	sel, err := labels.Parse(enc)
	if err != nil {
		return nil, errors.New(decodeMessage(err.Error(), back))
	}
	lreqs, _ := sel.Requirements()
	reqs := make([]Requirement, 0, len(lreqs))
	for i := range lreqs {
		if _, ours := back[lreqs[i].Key()]; !ours && isReservedDomain(lreqs[i].Key()) {
			return nil, fmt.Errorf("key %q uses the reserved domain %s; write reserved keys as @word:key", lreqs[i].Key(), reservedDomain)
		}
		r, err := fromLabelRequirement(&lreqs[i])
		if err != nil {
			return nil, errors.New(decodeMessage(err.Error(), back))
		}
		reqs = append(reqs, r)
	}
	return &Selector{Selector: sel, Text: t, reqs: reqs}, nil
}

// newStructuredSelector builds a selector from the structured form
// (matchLabels, matchExpressions); keys may be reserved keys.
func newStructuredSelector(reqs []Requirement) (*Selector, error) {
	sel := labels.NewSelector()
	out := make([]Requirement, 0, len(reqs))
	for _, r := range reqs {
		ek, err := encodeKey(r.Key)
		if err != nil {
			return nil, err
		}
		var op selection.Operator
		switch r.Op {
		case OpIn:
			op = selection.In
		case OpNotIn:
			op = selection.NotIn
		case OpExists:
			op = selection.Exists
		case OpDoesNotExist:
			op = selection.DoesNotExist
		default:
			return nil, fmt.Errorf("bad operator %d", r.Op)
		}
		lr, err := labels.NewRequirement(ek, op, r.Values)
		if err != nil {
			return nil, errors.New(decodeMessage(err.Error(), map[string]string{ek: r.Key}))
		}
		sel = sel.Add(*lr)
		dr, err := fromLabelRequirement(lr)
		if err != nil {
			return nil, err
		}
		out = append(out, dr)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return &Selector{Selector: sel, Text: requirementsText(out), reqs: out}, nil
}

func fromLabelRequirement(lr *labels.Requirement) (Requirement, error) {
	r := Requirement{Key: decodeKey(lr.Key())}
	switch lr.Operator() {
	case selection.In, selection.Equals, selection.DoubleEquals:
		r.Op = OpIn
	case selection.NotIn, selection.NotEquals:
		r.Op = OpNotIn
	case selection.Exists:
		r.Op = OpExists
	case selection.DoesNotExist:
		r.Op = OpDoesNotExist
	default:
		return Requirement{}, fmt.Errorf("operator %q is not supported (use =, !=, in, notin, key, !key)", string(lr.Operator()))
	}
	if r.Op == OpIn || r.Op == OpNotIn {
		r.Values = lr.Values().List() // sorted, unique
	}
	return r, nil
}

// requirementsText renders requirements in the Kubernetes string form.
func requirementsText(reqs []Requirement) string {
	if len(reqs) == 0 {
		return everything
	}
	parts := make([]string, len(reqs))
	for i, r := range reqs {
		switch r.Op {
		case OpIn:
			if len(r.Values) == 1 {
				parts[i] = r.Key + "=" + r.Values[0]
			} else {
				parts[i] = r.Key + " in (" + strings.Join(r.Values, ",") + ")"
			}
		case OpNotIn:
			if len(r.Values) == 1 {
				parts[i] = r.Key + "!=" + r.Values[0]
			} else {
				parts[i] = r.Key + " notin (" + strings.Join(r.Values, ",") + ")"
			}
		case OpExists:
			parts[i] = r.Key
		case OpDoesNotExist:
			parts[i] = "!" + r.Key
		}
	}
	return strings.Join(parts, ",")
}

// Reserved keys ("@W:P/N", "@W:N") are not valid Kubernetes label keys, so
// selectors carry them encoded as "P.W.reserved.trireme/N" and
// "W.reserved.trireme/N". The encoding is bijective because user keys in that
// domain are rejected.
const reservedDomain = "reserved.trireme"

var (
	reservedWord  = regexp.MustCompile(`^[a-z]+$`)
	reservedInTxt = regexp.MustCompile(`@[^:\s,()=!<>]*:[A-Za-z0-9._/-]*`)
)

// IsReservedKey reports whether key is a reserved key (@word:key).
func IsReservedKey(key string) bool { return strings.HasPrefix(key, "@") }

func isReservedDomain(key string) bool {
	prefix, _, ok := strings.Cut(key, "/")
	return ok && (prefix == reservedDomain || strings.HasSuffix(prefix, "."+reservedDomain))
}

func encodeKey(key string) (string, error) {
	if !strings.HasPrefix(key, "@") {
		if isReservedDomain(key) {
			return "", fmt.Errorf("key %q uses the reserved domain %s; write reserved keys as @word:key", key, reservedDomain)
		}
		return key, nil
	}
	word, rest, ok := strings.Cut(key[1:], ":")
	if !ok || !reservedWord.MatchString(word) || rest == "" {
		return "", fmt.Errorf("bad reserved key %q: want @word:key with a lowercase word, e.g. @sys:image", key)
	}
	if p, n, ok := strings.Cut(rest, "/"); ok {
		if p == "" {
			return "", fmt.Errorf("bad reserved key %q: empty prefix before /", key)
		}
		return p + "." + word + "." + reservedDomain + "/" + n, nil
	}
	return word + "." + reservedDomain + "/" + rest, nil
}

// decodeKey maps an encoded reserved key back to "@W:..."; other keys are
// returned unchanged.
func decodeKey(key string) string {
	prefix, name, ok := strings.Cut(key, "/")
	if !ok || !strings.HasSuffix(prefix, "."+reservedDomain) {
		return key
	}
	pw := strings.TrimSuffix(prefix, "."+reservedDomain)
	if i := strings.LastIndexByte(pw, '.'); i >= 0 {
		return "@" + pw[i+1:] + ":" + pw[:i] + "/" + name
	}
	return "@" + pw + ":" + name
}

func encodeKeysInText(text string) (string, map[string]string, error) {
	if !strings.Contains(text, "@") {
		return text, nil, nil
	}
	back := map[string]string{}
	var firstErr error
	enc := reservedInTxt.ReplaceAllStringFunc(text, func(k string) string {
		e, err := encodeKey(k)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			return k
		}
		back[e] = k
		return e
	})
	return enc, back, firstErr
}

func decodeMessage(msg string, back map[string]string) string {
	for e, k := range back {
		msg = strings.ReplaceAll(msg, e, k)
	}
	return msg
}
