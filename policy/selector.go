package policy

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/trireme-go/trireme/identity"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/util/validation"
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

// Selector is a Kubernetes label selector over tags, kept with the text it was
// written as, for messages and `policy explain`. Its values may be any tag
// value (checkValue), not only Kubernetes label values.
type Selector struct {
	Text  string
	reqs  []Requirement
	built bool // made by this package (Compile refuses others)
}

// Requirements returns the selector's terms (decoded keys and values). None
// means the selector matches every tag set.
func (s *Selector) Requirements() []Requirement { return s.reqs }

// Empty reports whether the selector matches every tag set.
func (s *Selector) Empty() bool { return len(s.reqs) == 0 }

func (s *Selector) String() string { return s.Text }

// everything is the text of the selector that matches every tag set.
const everything = "*"

// newSelector wraps parsed requirements (decoded, values sorted and unique).
func newSelector(text string, reqs []Requirement) *Selector {
	return &Selector{Text: text, reqs: reqs, built: true}
}

var labelOps = [...]selection.Operator{OpIn: selection.In, OpNotIn: selection.NotIn, OpExists: selection.Exists, OpDoesNotExist: selection.DoesNotExist}

// ParseSelector parses the Kubernetes string form of a label selector
// ("app=web, env in (prod,staging), tier!=db, !legacy"). Keys may be reserved
// keys such as "@sys:image". Values may be any tag value (checkValue):
// written bare when they hold no separator, space or '"', else in double
// quotes (`@sys:image="registry.local:5000/nginx:1.25"`). "" and "*" match
// every tag set. The numeric operators gt/lt are not supported.
//
// apimachinery's parser stays the judge of the grammar, the operators and
// the keys: each value is replaced by a placeholder that is a valid label
// value before it parses, and mapped back afterwards. A selector whose
// values are all Kubernetes label values therefore means exactly what
// apimachinery makes of it.
func ParseSelector(text string) (*Selector, error) {
	t := strings.TrimSpace(text)
	if t == "" || t == everything {
		return newSelector(everything, nil), nil
	}
	if i := strings.IndexByte(text, 0); i >= 0 {
		// apimachinery's lexer takes NUL for the end of the text and would
		// ignore what follows.
		return nil, &selError{i, "NUL byte in the selector"}
	}
	toks, err := lexSelector(t)
	if err == nil {
		err = markValues(toks)
	}
	if se, ok := err.(*selError); ok {
		se.Offset += strings.Index(text, t) // offsets count from the untrimmed text
		return nil, se
	}
	if err != nil {
		return nil, err
	}
	// Placeholder i is marker+i+"z", where marker occurs nowhere in the
	// text: no placeholder is part of the text or of another placeholder.
	marker := "tq0q"
	for n := 1; strings.Contains(t, marker); n++ {
		marker = "tq" + strconv.Itoa(n) + "q"
	}
	var sub strings.Builder
	var vals, written []string // placeholder i stands for vals[i], written as written[i]
	at := 0
	for i := range toks {
		tk := &toks[i]
		if !tk.value && tk.kind != tokQuoted {
			continue
		}
		sub.WriteString(t[at:tk.start])
		sub.WriteString(marker + strconv.Itoa(len(vals)) + "z")
		vals = append(vals, tk.text)
		written = append(written, t[tk.start:tk.end])
		at = tk.end
	}
	sub.WriteString(t[at:])
	placeholders := make(map[string]int, len(vals))
	for i := range vals {
		placeholders[marker+strconv.Itoa(i)+"z"] = i
	}
	unplace := func(msg string) string {
		if len(vals) == 0 {
			return msg
		}
		for p, i := range placeholders {
			msg = strings.ReplaceAll(msg, p, written[i])
		}
		return msg
	}
	enc, back, err := encodeKeysInText(sub.String())
	if err != nil {
		return nil, errors.New(unplace(err.Error()))
	}
	sel, err := labels.Parse(enc)
	if err != nil {
		return nil, errors.New(unplace(decodeMessage(err.Error(), back)))
	}
	lreqs, _ := sel.Requirements()
	reqs := make([]Requirement, 0, len(lreqs))
	for i := range lreqs {
		if _, ours := back[lreqs[i].Key()]; !ours && isReservedDomain(lreqs[i].Key()) {
			return nil, fmt.Errorf("key %q uses the reserved domain %s; write reserved keys as @word:key", lreqs[i].Key(), reservedDomain)
		}
		r, err := fromLabelRequirement(&lreqs[i])
		if err != nil {
			return nil, errors.New(unplace(decodeMessage(err.Error(), back)))
		}
		for j, v := range r.Values {
			if v == "" { // apimachinery's implicit empty value ("k=", "k in ()")
				continue
			}
			vi, ok := placeholders[v]
			if !ok {
				// The scan and apimachinery disagree on what a value is:
				// refuse rather than guess.
				return nil, fmt.Errorf("cannot tell the values of this selector apart at %q; quote the values", unplace(v))
			}
			r.Values[j] = vals[vi]
		}
		sort.Strings(r.Values)
		r.Values = slices.Compact(r.Values)
		reqs = append(reqs, r)
	}
	return newSelector(t, reqs), nil
}

// selError is a problem at a byte offset of a selector's text, so that a
// file's error can point at the column.
type selError struct {
	Offset int
	Msg    string
}

func (e *selError) Error() string { return e.Msg }

// MaxValueLen is the longest tag value a selector accepts, in bytes: enough
// for any container image reference (name ≤ 255, ":" tag ≤ 128, "@" digest).
const MaxValueLen = 512

// checkValue is the rule for a value in a selector: valid UTF-8 without
// control characters (Unicode category Cc), at most MaxValueLen bytes. The
// empty value is allowed.
func checkValue(v string) error {
	if len(v) > MaxValueLen {
		return fmt.Errorf("value %q... is longer than %d bytes", truncate(v, 32), MaxValueLen)
	}
	if !utf8.ValidString(v) {
		return fmt.Errorf("value %q is not valid UTF-8", truncate(v, 64))
	}
	for _, r := range v {
		if unicode.IsControl(r) {
			return fmt.Errorf("value %q contains the control character %U", truncate(v, 64), r)
		}
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

// The string form's tokens: as apimachinery's lexer splits the text, plus
// double-quoted values.
type tokKind uint8

const (
	tokIdent  tokKind = iota // a run of bytes that are neither space nor special
	tokQuoted                // "..." with \" and \\ escapes; text is the value
	tokSymbol                // ! != ( ) , = == > <
	tokEnd
)

type selToken struct {
	kind       tokKind
	text       string
	start, end int  // byte span in the selector text
	value      bool // read as a value by the grammar
}

func isSelSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

func isSelSpecial(c byte) bool {
	switch c {
	case '=', '!', '(', ')', ',', '>', '<':
		return true
	}
	return false
}

// lexSelector splits the text like apimachinery's lexer (identifiers, and
// symbols with "!=" and "==" as one token), and reads a token that starts
// with '"' as a quoted value.
func lexSelector(s string) ([]selToken, error) {
	var toks []selToken
	i := 0
	for {
		for i < len(s) && isSelSpace(s[i]) {
			i++
		}
		if i == len(s) {
			return append(toks, selToken{kind: tokEnd, start: i, end: i}), nil
		}
		start := i
		switch c := s[i]; {
		case isSelSpecial(c):
			i++
			if i < len(s) && s[i] == '=' && (c == '!' || c == '=') {
				i++
			}
			toks = append(toks, selToken{kind: tokSymbol, text: s[start:i], start: start, end: i})
		case c == '"':
			var b strings.Builder
			for i++; ; i++ {
				if i == len(s) {
					return nil, &selError{start, "unterminated quoted value"}
				}
				c := s[i]
				if c == '"' {
					i++
					break
				}
				if c == '\\' {
					if i+1 == len(s) || s[i+1] != '"' && s[i+1] != '\\' {
						return nil, &selError{i, `bad escape in a quoted value: only \" and \\ are allowed`}
					}
					i++
					c = s[i]
				}
				b.WriteByte(c)
			}
			if i < len(s) && !isSelSpace(s[i]) && !isSelSpecial(s[i]) {
				return nil, &selError{i, fmt.Sprintf("quoted value followed by %q: want a space, ',' or ')'", s[i])}
			}
			toks = append(toks, selToken{kind: tokQuoted, text: b.String(), start: start, end: i})
		default:
			for i < len(s) && !isSelSpace(s[i]) && !isSelSpecial(s[i]) {
				i++
			}
			toks = append(toks, selToken{kind: tokIdent, text: s[start:i], start: start, end: i})
		}
	}
}

// markValues walks the tokens the way apimachinery's recursive-descent
// parser does and marks the tokens it reads as values, checking each
// against the value rule. Where the grammar breaks it stops: apimachinery
// then reports the syntax error. A quoted token is refused as a key.
func markValues(toks []selToken) error {
	ident := func(t *selToken) bool { return t.kind == tokIdent || t.kind == tokQuoted }
	sym := func(t *selToken, s string) bool { return t.kind == tokSymbol && t.text == s }
	value := func(t *selToken) error {
		t.value = true
		if t.kind == tokIdent {
			if strings.ContainsRune(t.text, '"') {
				return &selError{t.start, fmt.Sprintf(`value %q contains '"': write the value in double quotes, with \" for '"' and \\ for '\'`, truncate(t.text, 64))}
			}
			if strings.IndexFunc(t.text, unicode.IsSpace) >= 0 {
				return &selError{t.start, fmt.Sprintf("value %q contains a space: write it in double quotes", truncate(t.text, 64))}
			}
		}
		if err := checkValue(t.text); err != nil {
			return &selError{t.start, err.Error()}
		}
		return nil
	}
	p := 0
	for {
		t := &toks[p]
		if t.kind == tokEnd || !ident(t) && !sym(t, "!") {
			return nil
		}
		// <requirement> ::= [!] KEY [ in|notin ( values ) | =|==|!= VALUE ]
		p++
		dne := sym(t, "!")
		if dne {
			t = &toks[p]
			p++
		}
		if t.kind == tokQuoted {
			return &selError{t.start, fmt.Sprintf("key %q: keys cannot be quoted", truncate(t.text, 64))}
		}
		if t.kind != tokIdent {
			return nil
		}
		if la := &toks[p]; dne || la.kind == tokEnd || sym(la, ",") {
			// exists or does-not-exist: nothing more to read
		} else {
			op := &toks[p]
			p++
			switch {
			case op.kind == tokIdent && (op.text == "in" || op.text == "notin"):
				if !sym(&toks[p], "(") {
					return nil
				}
				p++
				if sym(&toks[p], ")") {
					p++
					break
				}
				if !ident(&toks[p]) && !sym(&toks[p], ",") {
					return nil
				}
			list:
				for {
					t := &toks[p]
					p++
					switch {
					case ident(t):
						if err := value(t); err != nil {
							return err
						}
						switch la := &toks[p]; {
						case sym(la, ","):
						case sym(la, ")"):
							break list
						default:
							return nil
						}
					case sym(t, ","):
						if sym(&toks[p], ")") {
							break list
						}
					default:
						return nil
					}
				}
				if !sym(&toks[p], ")") {
					return nil
				}
				p++
			case sym(op, "="), sym(op, "=="), sym(op, "!="):
				if la := &toks[p]; la.kind == tokEnd || sym(la, ",") {
					break // the empty value
				}
				if !ident(&toks[p]) {
					return nil
				}
				if err := value(&toks[p]); err != nil {
					return err
				}
				p++
			default:
				// > and < (refused after parsing, with their own message),
				// or no operator: apimachinery reports it.
				return nil
			}
		}
		// After a requirement: "," and the next one, or the end.
		switch t := &toks[p]; {
		case t.kind == tokEnd:
			return nil
		case sym(t, ","):
			p++
		default:
			return nil
		}
	}
}

// newStructuredSelector builds a selector from the structured form
// (matchLabels, matchExpressions); keys may be reserved keys, values any tag
// values.
func newStructuredSelector(reqs []Requirement) (*Selector, error) {
	out := make([]Requirement, 0, len(reqs))
	for _, r := range reqs {
		ek, err := encodeKey(r.Key)
		if err != nil {
			return nil, err
		}
		if int(r.Op) >= len(labelOps) {
			return nil, fmt.Errorf("bad operator %d", r.Op)
		}
		// apimachinery checks the key and the operator's arity; the values
		// are checked here, against the wider rule.
		stand := make([]string, len(r.Values))
		for i, v := range r.Values {
			if err := checkValue(v); err != nil {
				return nil, fmt.Errorf("key %s: %v", r.Key, err)
			}
			stand[i] = "v"
		}
		if _, err := labels.NewRequirement(ek, labelOps[r.Op], stand); err != nil {
			return nil, errors.New(decodeMessage(err.Error(), map[string]string{ek: r.Key}))
		}
		dr := Requirement{Key: r.Key, Op: r.Op}
		if r.Op == OpIn || r.Op == OpNotIn {
			dr.Values = slices.Clone(r.Values)
			sort.Strings(dr.Values)
			dr.Values = slices.Compact(dr.Values)
		}
		out = append(out, dr)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return newSelector(requirementsText(out), out), nil
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

// quoteValue writes a value so that ParseSelector reads it back: bare when
// it is a Kubernetes label value, else in double quotes.
func quoteValue(v string) string {
	if len(validation.IsValidLabelValue(v)) == 0 {
		return v
	}
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(v); i++ {
		if v[i] == '"' || v[i] == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(v[i])
	}
	b.WriteByte('"')
	return b.String()
}

// requirementsText renders requirements in the string form (values quoted
// where needed).
func requirementsText(reqs []Requirement) string {
	if len(reqs) == 0 {
		return everything
	}
	parts := make([]string, len(reqs))
	for i, r := range reqs {
		vals := make([]string, len(r.Values))
		for j, v := range r.Values {
			vals[j] = quoteValue(v)
		}
		switch r.Op {
		case OpIn:
			if len(vals) == 1 {
				parts[i] = r.Key + "=" + vals[0]
			} else {
				parts[i] = r.Key + " in (" + strings.Join(vals, ",") + ")"
			}
		case OpNotIn:
			if len(vals) == 1 {
				parts[i] = r.Key + "!=" + vals[0]
			} else {
				parts[i] = r.Key + " notin (" + strings.Join(vals, ",") + ")"
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

func isReservedDomain(key string) bool {
	prefix, _, ok := strings.Cut(key, "/")
	return ok && (prefix == reservedDomain || strings.HasSuffix(prefix, "."+reservedDomain))
}

func encodeKey(key string) (string, error) {
	if !identity.IsReserved(key) {
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
		return identity.ReservedPrefix + pw[i+1:] + ":" + pw[:i] + "/" + name
	}
	return identity.ReservedPrefix + pw + ":" + name
}

func encodeKeysInText(text string) (string, map[string]string, error) {
	if !strings.Contains(text, identity.ReservedPrefix) {
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
