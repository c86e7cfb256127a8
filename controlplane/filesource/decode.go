package filesource

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	yaml "go.yaml.in/yaml/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// decoded is one object decoded from a file, with where it came from.
type decoded struct {
	obj      Object
	file     string
	line     int // where the document starts
	nameLine int // where metadata.name is
}

// decoder turns manifest files into typed objects. It caches what it learns
// about Go types, so one decoder should serve a whole load; it is not safe
// for concurrent use.
type decoder struct {
	types map[reflect.Type]*typeInfo
	kinds []kindInfo
}

// typeInfo is what the walker needs to know about a Go type.
type typeInfo struct {
	proto       protoreflect.MessageDescriptor // set when the type is a protobuf message
	unmarshaler bool                           // the type decodes its own JSON
	fields      map[string]reflect.Type        // JSON field name -> type, for structs
}

func newDecoder() *decoder {
	return &decoder{types: map[reflect.Type]*typeInfo{}, kinds: kinds()}
}

// typeInfo returns (and caches) what the walker needs to know about t, a
// non-pointer type.
func (d *decoder) typeInfo(t reflect.Type) *typeInfo {
	if ti, ok := d.types[t]; ok {
		return ti
	}
	ti := &typeInfo{}
	pt := reflect.PointerTo(t)
	switch {
	case pt.Implements(protoMessage):
		ti.proto = reflect.New(t).Interface().(proto.Message).ProtoReflect().Descriptor()
	case pt.Implements(jsonUnmarshaler):
		ti.unmarshaler = true
	case t.Kind() == reflect.Struct:
		ti.fields = jsonFields(t)
	}
	d.types[t] = ti
	return ti
}

// decodeFile decodes every document of one file. It returns the objects and
// the errors found; when errs is non-empty the caller must not use objs. Two
// documents of the file with the same key are an error too.
func (d *decoder) decodeFile(name string, data []byte) (objs []decoded, errs []error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	seen := map[Key]decoded{}
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			errs = append(errs, yamlSyntaxError(name, data, err))
			break // the decoder cannot resynchronise after a syntax error
		}
		if len(doc.Content) == 0 {
			continue
		}
		root := resolveAlias(doc.Content[0])
		if root == nil || (root.Kind == yaml.ScalarNode && root.ShortTag() == "!!null") {
			continue // an empty document, e.g. after a trailing ---
		}
		obj, nameLine, derrs := d.decodeDocument(name, root)
		if len(derrs) > 0 {
			errs = append(errs, derrs...)
			continue
		}
		o := decoded{obj: obj, file: name, line: root.Line, nameLine: nameLine}
		k := KeyOf(obj)
		if other, ok := seen[k]; ok {
			errs = append(errs, dupError(o, other))
			continue
		}
		seen[k] = o
		objs = append(objs, o)
	}
	return objs, errs
}

var yamlLineRE = regexp.MustCompile(`line (\d+): `)

// yamlSyntaxError describes a YAML syntax error with the line it is on. The
// YAML library's message often names the line where the enclosing block
// starts (or the one before it) rather than the offending one, so the line
// is found again: it is the shortest run of leading lines that fails with
// the same message.
func yamlSyntaxError(file string, data []byte, err error) error {
	msg, line := splitYAMLError(err)
	lines := bytes.SplitAfter(data, []byte("\n"))
	fails := func(n int) bool {
		m, _ := splitYAMLError(firstYAMLError(bytes.Join(lines[:n], nil)))
		return m == msg
	}
	if lo, hi := 1, len(lines); fails(hi) {
		for lo < hi {
			if mid := lo + (hi-lo)/2; fails(mid) {
				hi = mid
			} else {
				lo = mid + 1
			}
		}
		line = lo
	}
	return &Error{File: file, Line: line, Msg: "invalid YAML: " + msg}
}

// splitYAMLError returns the message of a YAML error without its "yaml:"
// prefix and line, and the line.
func splitYAMLError(err error) (msg string, line int) {
	if err == nil {
		return "", 0
	}
	msg = strings.TrimPrefix(err.Error(), "yaml: ")
	if m := yamlLineRE.FindStringSubmatchIndex(msg); m != nil {
		line, _ = strconv.Atoi(msg[m[2]:m[3]])
		msg = msg[:m[0]] + msg[m[1]:]
	}
	return strings.TrimSpace(msg), line
}

// firstYAMLError returns the first syntax error in data, if any.
func firstYAMLError(data []byte) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	return n
}

// mappingValue returns the key and value nodes of key in a mapping node.
func mappingValue(n *yaml.Node, key string) (keyNode, value *yaml.Node) {
	if n == nil || n.Kind != yaml.MappingNode {
		return nil, nil
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i], resolveAlias(n.Content[i+1])
		}
	}
	return nil, nil
}

func scalarString(n *yaml.Node) string {
	if n == nil || n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		return ""
	}
	return n.Value
}

// decodeDocument decodes one YAML document into its typed object and
// returns it with the line of its metadata.name.
func (d *decoder) decodeDocument(file string, root *yaml.Node) (_ Object, nameLine int, _ []error) {
	if root.Kind != yaml.MappingNode {
		return nil, 0, []error{&Error{File: file, Line: root.Line, Msg: "a manifest must be a YAML mapping with apiVersion, kind and metadata"}}
	}
	apiKey, apiNode := mappingValue(root, "apiVersion")
	kindKey, kindNode := mappingValue(root, "kind")
	_, meta := mappingValue(root, "metadata")
	_, nameNode := mappingValue(meta, "name")
	_, nsNode := mappingValue(meta, "namespace")
	base := Error{File: file, Line: root.Line, Kind: scalarString(kindNode), Name: scalarString(nameNode), Namespace: scalarString(nsNode)}
	fail := func(line int, field, format string, args ...any) []error {
		e := base
		if line > 0 {
			e.Line = line
		}
		e.Field, e.Msg = field, fmt.Sprintf(format, args...)
		return []error{&e}
	}
	apiVersion, kind := scalarString(apiNode), scalarString(kindNode)
	switch {
	case apiNode == nil:
		return nil, 0, fail(0, "apiVersion", "is required")
	case apiVersion == "":
		return nil, 0, fail(apiKey.Line, "apiVersion", "must be a non-empty string")
	case kindNode == nil:
		return nil, 0, fail(0, "kind", "is required")
	case kind == "":
		return nil, 0, fail(kindKey.Line, "kind", "must be a non-empty string")
	}
	info, ok := d.lookupKind(apiVersion, kind)
	if !ok {
		return nil, 0, fail(kindKey.Line, "kind", "unknown kind %s (apiVersion %s); supported: %s", kind, apiVersion, d.supportedKinds())
	}
	if !info.namespaced {
		if nsNode != nil && base.Namespace != "" {
			nsKey, _ := mappingValue(meta, "namespace")
			base.Namespace = ""
			return nil, 0, fail(nsKey.Line, "metadata.namespace", "must not be set: %s is cluster-scoped", info.kind)
		}
		base.Namespace = ""
	} else if base.Namespace == "" {
		base.Namespace = "default"
	}

	obj := info.newObject()
	w := &walker{dec: d, base: base, lines: map[string]int{}}
	w.walkGo(root, reflect.TypeOf(obj).Elem(), "")
	if len(w.errs) > 0 {
		return nil, 0, w.errs
	}
	// The walker has checked every field and type; encoding/json (and the
	// Istio types' own protobuf JSON decoder) now fill the Go value.
	budget := maxExpandedNodes
	js, err := json.Marshal(nodeToAny(root, &budget))
	if err != nil {
		return nil, 0, fail(0, "", "cannot convert to JSON: %v", err)
	}
	if err := json.Unmarshal(js, obj); err != nil {
		field, msg := describeJSONError(err)
		return nil, 0, fail(w.lineOf(field), field, "%s", msg)
	}
	// One Go type per kind: the accepted older versions of a kind decode
	// into the same type, and say the canonical version.
	obj.GetObjectKind().SetGroupVersionKind(info.gvk())
	if info.namespaced && obj.GetNamespace() == "" {
		obj.SetNamespace("default")
	}
	v := &validator{walker: w}
	validateMeta(v, obj, info)
	info.validate(v, obj)
	if len(w.errs) > 0 {
		return nil, 0, w.errs
	}
	applyDefaults(obj)
	return obj, w.lineOf("metadata.name"), nil
}

func describeJSONError(err error) (field, msg string) {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return te.Field, fmt.Sprintf("cannot use a %s value here (want %s)", te.Value, te.Type)
	}
	return "", err.Error()
}

// maxExpandedNodes bounds the work one document may cause through YAML
// aliases (a "billion laughs" document expands exponentially).
const maxExpandedNodes = 1 << 20

// yamlInt returns the value of an integer scalar as YAML resolves it
// (decimal, 0x, 0o, 0b, underscores). Exactly one of i and u is meaningful:
// u only for values above MaxInt64.
func yamlInt(n *yaml.Node) (i int64, u uint64, big, ok bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		return 0, 0, false, false
	}
	if err := n.Decode(&i); err == nil {
		return i, 0, false, true
	}
	if err := n.Decode(&u); err == nil {
		return 0, u, true, true
	}
	return 0, 0, false, false
}

// nodeToAny converts a YAML node to the value encoding/json would produce
// from the equivalent JSON. Keys are always strings (YAML allows integer
// keys; JSON and protobuf maps with integer keys spell them as strings).
func nodeToAny(n *yaml.Node, budget *int) any {
	n = resolveAlias(n)
	if *budget--; n == nil || *budget < 0 {
		return nil
	}
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 0 {
			return nil
		}
		return nodeToAny(n.Content[0], budget)
	case yaml.MappingNode:
		m := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			m[n.Content[i].Value] = nodeToAny(n.Content[i+1], budget)
		}
		return m
	case yaml.SequenceNode:
		s := make([]any, 0, len(n.Content))
		for _, c := range n.Content {
			s = append(s, nodeToAny(c, budget))
		}
		return s
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!null":
			return nil
		case "!!bool":
			var b bool
			if err := n.Decode(&b); err != nil {
				return n.Value
			}
			return b
		case "!!int":
			if i, u, big, ok := yamlInt(n); ok {
				if big {
					return json.Number(strconv.FormatUint(u, 10))
				}
				return json.Number(strconv.FormatInt(i, 10))
			}
			return n.Value
		case "!!float":
			var f float64
			if err := n.Decode(&f); err == nil && !math.IsInf(f, 0) && !math.IsNaN(f) {
				return json.Number(strconv.FormatFloat(f, 'g', -1, 64))
			}
			return n.Value
		default:
			return n.Value
		}
	}
	return nil
}

// walker checks a YAML tree against a Go type (through its json tags) or a
// protobuf message descriptor, reporting unknown and repeated fields and
// wrongly typed values with their path and line. It remembers the line of
// every path so that later validation errors can point at the right line.
type walker struct {
	dec   *decoder
	base  Error
	lines map[string]int
	errs  []error
	nodes int // nodes visited, bounded by maxExpandedNodes
}

// tooBig counts a visit and reports (once) when the document is too large.
func (w *walker) tooBig(n *yaml.Node) bool {
	w.nodes++
	if w.nodes == maxExpandedNodes+1 {
		w.errorf(n.Line, "", "document too large after expanding YAML aliases (more than %d nodes)", maxExpandedNodes)
	}
	return w.nodes > maxExpandedNodes
}

func (w *walker) errorf(line int, field, format string, args ...any) {
	e := w.base
	if line > 0 {
		e.Line = line
	}
	e.Field, e.Msg = field, fmt.Sprintf(format, args...)
	w.errs = append(w.errs, &e)
}

// lineOf returns the line of path, or of its closest recorded parent.
func (w *walker) lineOf(path string) int {
	for p := path; p != ""; {
		if l, ok := w.lines[p]; ok {
			return l
		}
		i := strings.LastIndexAny(p, ".[")
		if i <= 0 {
			break
		}
		p = p[:i]
	}
	return w.base.Line
}

func join(path, field string) string {
	if path == "" {
		return field
	}
	return path + "." + field
}

var (
	jsonUnmarshaler = reflect.TypeFor[json.Unmarshaler]()
	protoMessage    = reflect.TypeFor[proto.Message]()
)

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	switch n.ShortTag() {
	case "!!str":
		return fmt.Sprintf("the string %q", n.Value)
	case "!!int", "!!float":
		return "the number " + n.Value
	case "!!bool":
		return "the boolean " + n.Value
	case "!!null":
		return "null"
	}
	return fmt.Sprintf("%q (%s)", n.Value, n.ShortTag())
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

// mappingEntries checks that n is a mapping without merge keys or repeated
// keys and calls f for each entry with the entry's path.
func (w *walker) mappingEntries(n *yaml.Node, path string, mapKeys bool, f func(k, v *yaml.Node, p string)) {
	if n.Kind != yaml.MappingNode {
		w.errorf(n.Line, path, "expected a mapping, got %s", kindName(n))
		return
	}
	seen := make(map[string]int, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		p := join(path, k.Value)
		if mapKeys {
			p = path + "[" + k.Value + "]"
		}
		if k.Kind != yaml.ScalarNode {
			w.errorf(k.Line, path, "a key must be a plain value, got %s", kindName(k))
			continue
		}
		if k.ShortTag() == "!!merge" {
			w.errorf(k.Line, path, "YAML merge keys (<<) are not supported")
			continue
		}
		if first, dup := seen[k.Value]; dup {
			w.errorf(k.Line, p, "duplicate key %q (first at line %d)", k.Value, first)
			continue
		}
		seen[k.Value] = k.Line
		w.lines[p] = k.Line
		f(k, v, p)
	}
}

func (w *walker) walkGo(n *yaml.Node, t reflect.Type, path string) {
	n = resolveAlias(n)
	if n == nil || isNull(n) || w.tooBig(n) {
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	ti := w.dec.typeInfo(t)
	if ti.proto != nil {
		w.walkProto(n, ti.proto, path)
		return
	}
	if ti.unmarshaler {
		w.walkUnmarshaler(n, t, path)
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		fields := ti.fields
		w.mappingEntries(n, path, false, func(k, v *yaml.Node, p string) {
			ft, ok := fields[k.Value]
			if !ok {
				w.errorf(k.Line, p, "unknown field %q", k.Value)
				return
			}
			w.walkGo(v, ft, p)
		})
	case reflect.Map:
		w.mappingEntries(n, path, true, func(k, v *yaml.Node, p string) {
			w.walkGo(v, t.Elem(), p)
		})
	case reflect.Slice, reflect.Array:
		if t.Elem().Kind() == reflect.Uint8 {
			w.expectScalar(n, path, "!!str", "a base64 string")
			return
		}
		if n.Kind != yaml.SequenceNode {
			w.errorf(n.Line, path, "expected a list, got %s", kindName(n))
			return
		}
		for i, c := range n.Content {
			p := path + "[" + strconv.Itoa(i) + "]"
			w.lines[p] = c.Line
			w.walkGo(c, t.Elem(), p)
		}
	case reflect.String:
		w.expectScalar(n, path, "!!str", "a string")
	case reflect.Bool:
		w.expectScalar(n, path, "!!bool", "true or false")
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		w.expectInt(n, path, true, t.Bits())
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		w.expectInt(n, path, false, t.Bits())
	case reflect.Float32, reflect.Float64:
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!int" {
			return
		}
		w.expectScalar(n, path, "!!float", "a number")
	case reflect.Interface:
		// Free-form (e.g. JSON values); any YAML is fine.
	}
}

// walkUnmarshaler checks a value whose Go type decodes itself (IntOrString,
// Quantity, Time, ...) by decoding just that subtree, so that a bad value is
// reported at its own path and line.
func (w *walker) walkUnmarshaler(n *yaml.Node, t reflect.Type, path string) {
	start := maxExpandedNodes - w.nodes
	budget := start
	js, err := json.Marshal(nodeToAny(n, &budget))
	w.nodes += start - budget // aliases may make a small-looking value large
	if err != nil || budget < 0 {
		w.errorf(n.Line, path, "cannot decode %s", kindName(n))
		return
	}
	if err := json.Unmarshal(js, reflect.New(t).Interface()); err != nil {
		_, msg := describeJSONError(err)
		w.errorf(n.Line, path, "invalid value %s: %s", kindName(n), strings.TrimPrefix(msg, "json: "))
	}
}

func (w *walker) expectScalar(n *yaml.Node, path, tag, want string) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != tag {
		w.errorf(n.Line, path, "expected %s, got %s", want, kindName(n))
	}
}

// expectInt checks that n is an integer that fits the given Go integer type.
func (w *walker) expectInt(n *yaml.Node, path string, signed bool, bits int) {
	i, _, big, ok := yamlInt(n)
	if !ok {
		w.errorf(n.Line, path, "expected an integer, got %s", kindName(n))
		return
	}
	var fits bool
	switch {
	case signed:
		fits = !big && i >= -1<<(bits-1) && i <= 1<<(bits-1)-1
	case big:
		fits = bits == 64
	default:
		fits = i >= 0 && (bits == 64 || i <= 1<<bits-1)
	}
	if !fits {
		typ := "int"
		if !signed {
			typ = "uint"
		}
		w.errorf(n.Line, path, "integer %s out of range (%s%d)", n.Value, typ, bits)
	}
}

// jsonFields maps the JSON names of t's fields (following inline and
// embedded structs) to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	var add func(t reflect.Type, depth int)
	add = func(t reflect.Type, depth int) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := f.Tag.Get("json")
			name, opts, _ := strings.Cut(tag, ",")
			if name == "-" && opts == "" {
				continue
			}
			inline := strings.Contains(","+opts+",", ",inline,")
			if f.Anonymous && (name == "" || inline) {
				ft := f.Type
				for ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				if ft.Kind() == reflect.Struct && depth < 8 {
					add(ft, depth+1)
					continue
				}
			}
			if !f.IsExported() {
				continue
			}
			if name == "" {
				name = f.Name
			}
			if _, ok := out[name]; !ok || depth == 0 {
				out[name] = f.Type
			}
		}
	}
	add(t, 0)
	return out
}

func (w *walker) walkProto(n *yaml.Node, md protoreflect.MessageDescriptor, path string) {
	n = resolveAlias(n)
	if n == nil || isNull(n) || w.tooBig(n) {
		return
	}
	if strings.HasPrefix(string(md.FullName()), "google.protobuf.") {
		return // well-known types have their own JSON forms
	}
	fields := md.Fields()
	oneofs := map[protoreflect.FullName]string{}
	w.mappingEntries(n, path, false, func(k, v *yaml.Node, p string) {
		fd := fields.ByJSONName(k.Value)
		if fd == nil {
			fd = fields.ByName(protoreflect.Name(k.Value))
		}
		if fd == nil {
			w.errorf(k.Line, p, "unknown field %q", k.Value)
			return
		}
		v = resolveAlias(v)
		if v == nil || isNull(v) {
			return
		}
		if o := fd.ContainingOneof(); o != nil && !o.IsSynthetic() {
			if other, ok := oneofs[o.FullName()]; ok {
				w.errorf(k.Line, p, "only one of %s and %s may be set", other, k.Value)
				return
			}
			oneofs[o.FullName()] = k.Value
		}
		switch {
		case fd.IsMap():
			w.mappingEntries(v, p, true, func(mk, mv *yaml.Node, mp string) {
				w.walkProtoKey(mk, fd.MapKey(), mp)
				w.walkProtoValue(mv, fd.MapValue(), mp)
			})
		case fd.IsList():
			if v.Kind != yaml.SequenceNode {
				w.errorf(v.Line, p, "expected a list, got %s", kindName(v))
				return
			}
			for j, c := range v.Content {
				ip := p + "[" + strconv.Itoa(j) + "]"
				w.lines[ip] = c.Line
				w.walkProtoValue(c, fd, ip)
			}
		default:
			w.walkProtoValue(v, fd, p)
		}
	})
}

// walkProtoKey checks a map key against the key type: protobuf JSON spells
// integer and bool keys as strings, YAML may give them plain.
func (w *walker) walkProtoKey(k *yaml.Node, fd protoreflect.FieldDescriptor, path string) {
	var err error
	switch fd.Kind() {
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		_, err = strconv.ParseInt(k.Value, 10, 32)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		_, err = strconv.ParseInt(k.Value, 10, 64)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		_, err = strconv.ParseUint(k.Value, 10, 32)
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		_, err = strconv.ParseUint(k.Value, 10, 64)
	case protoreflect.BoolKind:
		_, err = strconv.ParseBool(k.Value)
	}
	if err != nil {
		w.errorf(k.Line, path, "invalid key %q: want a %s", k.Value, fd.Kind())
	}
}

func (w *walker) walkProtoValue(n *yaml.Node, fd protoreflect.FieldDescriptor, path string) {
	n = resolveAlias(n)
	if n == nil || isNull(n) {
		return
	}
	switch fd.Kind() {
	case protoreflect.MessageKind, protoreflect.GroupKind:
		w.walkProto(n, fd.Message(), path)
	case protoreflect.EnumKind:
		values := fd.Enum().Values()
		if i, _, big, ok := yamlInt(n); ok {
			if big || i < math.MinInt32 || i > math.MaxInt32 || values.ByNumber(protoreflect.EnumNumber(i)) == nil {
				w.errorf(n.Line, path, "unknown value %s; want one of %s", kindName(n), enumNames(values))
			}
			return
		}
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" || values.ByName(protoreflect.Name(n.Value)) == nil {
			w.errorf(n.Line, path, "unknown value %s; want one of %s", kindName(n), enumNames(values))
		}
	case protoreflect.StringKind, protoreflect.BytesKind:
		w.expectScalar(n, path, "!!str", "a string")
	case protoreflect.BoolKind:
		w.expectScalar(n, path, "!!bool", "true or false")
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!int" {
			return
		}
		w.expectScalar(n, path, "!!float", "a number")
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		w.expectInt(n, path, true, 32)
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		w.expectInt(n, path, true, 64)
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		w.expectInt(n, path, false, 32)
	default: // 64-bit unsigned
		w.expectInt(n, path, false, 64)
	}
}

func enumNames(values protoreflect.EnumValueDescriptors) string {
	names := make([]string, 0, values.Len())
	for i := 0; i < values.Len(); i++ {
		names = append(names, string(values.Get(i).Name()))
	}
	return strings.Join(names, ", ")
}
