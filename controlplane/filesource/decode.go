package filesource

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	obj  Object
	file string
	line int
}

// decodeFile decodes every document of one file. It returns the objects and
// the errors found; when errs is non-empty the caller must not use objs.
func decodeFile(name string, data []byte) (objs []decoded, errs []error) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			errs = append(errs, yamlSyntaxError(name, err))
			break // the decoder cannot resynchronise after a syntax error
		}
		if len(doc.Content) == 0 {
			continue
		}
		root := resolveAlias(doc.Content[0])
		if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
			continue // an empty document, e.g. after a trailing ---
		}
		obj, derrs := decodeDocument(name, root)
		if len(derrs) > 0 {
			errs = append(errs, derrs...)
			continue
		}
		objs = append(objs, decoded{obj: obj, file: name, line: root.Line})
	}
	return objs, errs
}

var yamlLineRE = regexp.MustCompile(`line (\d+)`)

func yamlSyntaxError(file string, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	line := 0
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = strings.TrimSpace(strings.Replace(msg, m[0]+":", "", 1))
	}
	return &Error{File: file, Line: line, Msg: "invalid YAML: " + msg}
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	return n
}

// mappingValue returns the value node of key in a mapping node.
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
	if n == nil || n.Kind != yaml.ScalarNode {
		return ""
	}
	return n.Value
}

// decodeDocument decodes one YAML document into its typed object.
func decodeDocument(file string, root *yaml.Node) (Object, []error) {
	if root.Kind != yaml.MappingNode {
		return nil, []error{&Error{File: file, Line: root.Line, Msg: "a manifest must be a YAML mapping with apiVersion, kind and metadata"}}
	}
	_, apiNode := mappingValue(root, "apiVersion")
	_, kindNode := mappingValue(root, "kind")
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
	if apiNode == nil || scalarString(apiNode) == "" {
		return nil, fail(0, "apiVersion", "is required")
	}
	if kindNode == nil || scalarString(kindNode) == "" {
		return nil, fail(0, "kind", "is required")
	}
	info, ok := lookupKind(apiNode.Value, kindNode.Value)
	if !ok {
		return nil, fail(kindNode.Line, "kind", "unknown kind %q (apiVersion %q); supported: %s", kindNode.Value, apiNode.Value, supportedKinds())
	}
	if !info.namespaced {
		base.Namespace = ""
	} else if base.Namespace == "" {
		base.Namespace = "default"
	}

	obj := info.newObject()
	w := &walker{file: file, base: base, lines: map[string]int{}}
	w.walkGo(root, reflect.TypeOf(obj).Elem(), "")
	if len(w.errs) > 0 {
		return nil, w.errs
	}
	budget := maxExpandedNodes
	tree := nodeToAny(root, &budget)
	if budget < 0 {
		return nil, fail(0, "", "document too large after expanding YAML aliases (more than %d nodes)", maxExpandedNodes)
	}
	js, err := json.Marshal(tree)
	if err != nil {
		return nil, fail(0, "", "cannot convert to JSON: %v", err)
	}
	if err := json.Unmarshal(js, obj); err != nil {
		field, msg := describeJSONError(err)
		return nil, fail(w.lineOf(field), field, "%s", msg)
	}
	if info.namespaced && obj.GetNamespace() == "" {
		obj.SetNamespace("default")
	}
	if !info.namespaced && obj.GetNamespace() != "" {
		_, nsKey := mappingValue(meta, "namespace")
		return nil, fail(lineOfNode(nsKey), "metadata.namespace", "must not be set: %s is cluster-scoped", info.kind)
	}
	v := &validator{walker: w}
	validateMeta(v, obj, info.namespaced)
	info.validate(v, obj)
	if len(w.errs) > 0 {
		return nil, w.errs
	}
	return obj, nil
}

func lineOfNode(n *yaml.Node) int {
	if n == nil {
		return 0
	}
	return n.Line
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
			b, err := strconv.ParseBool(strings.ToLower(n.Value))
			if err != nil {
				return n.Value
			}
			return b
		case "!!int":
			if i, err := strconv.ParseInt(n.Value, 0, 64); err == nil {
				return json.Number(strconv.FormatInt(i, 10))
			}
			if u, err := strconv.ParseUint(n.Value, 0, 64); err == nil {
				return json.Number(strconv.FormatUint(u, 10))
			}
			return n.Value
		case "!!float":
			if f, err := strconv.ParseFloat(n.Value, 64); err == nil {
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
// protobuf message descriptor, reporting unknown fields and wrongly typed
// values with their path and line, and remembers the line of every path so
// that later validation errors can point at the right line.
type walker struct {
	file  string
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
	case "!!int":
		return "the number " + n.Value
	case "!!float":
		return "the number " + n.Value
	case "!!bool":
		return "the boolean " + n.Value
	}
	return fmt.Sprintf("%q", n.Value)
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

func (w *walker) walkGo(n *yaml.Node, t reflect.Type, path string) {
	n = resolveAlias(n)
	if n == nil || isNull(n) || w.tooBig(n) {
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	pt := reflect.PointerTo(t)
	if pt.Implements(protoMessage) {
		msg := reflect.New(t).Interface().(proto.Message)
		w.walkProto(n, msg.ProtoReflect().Descriptor(), path)
		return
	}
	if pt.Implements(jsonUnmarshaler) || t.Implements(jsonUnmarshaler) {
		return // IntOrString, Quantity, Time...: their own decoder checks them
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			w.errorf(n.Line, path, "expected a mapping, got %s", kindName(n))
			return
		}
		fields := jsonFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := join(path, k.Value)
			w.lines[p] = k.Line
			if k.Value == "<<" {
				w.errorf(k.Line, path, "YAML merge keys (<<) are not supported")
				continue
			}
			ft, ok := fields[k.Value]
			if !ok {
				w.errorf(k.Line, p, "unknown field %q", k.Value)
				continue
			}
			w.walkGo(v, ft, p)
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			w.errorf(n.Line, path, "expected a mapping, got %s", kindName(n))
			return
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := path + "[" + k.Value + "]"
			w.lines[p] = k.Line
			w.walkGo(v, t.Elem(), p)
		}
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
			p := fmt.Sprintf("%s[%d]", path, i)
			w.lines[p] = c.Line
			w.walkGo(c, t.Elem(), p)
		}
	case reflect.String:
		w.expectScalar(n, path, "!!str", "a string")
	case reflect.Bool:
		w.expectScalar(n, path, "!!bool", "true or false")
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		w.expectScalar(n, path, "!!int", "an integer")
	case reflect.Float32, reflect.Float64:
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!int" {
			return
		}
		w.expectScalar(n, path, "!!float", "a number")
	}
}

func (w *walker) expectScalar(n *yaml.Node, path, tag, want string) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != tag {
		w.errorf(n.Line, path, "expected %s, got %s", want, kindName(n))
	}
}

// jsonFields maps the JSON names of t's fields (following inline and
// embedded structs) to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	var add func(t reflect.Type)
	add = func(t reflect.Type) {
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
				if ft.Kind() == reflect.Struct {
					add(ft)
					continue
				}
			}
			if !f.IsExported() {
				continue
			}
			if name == "" {
				name = f.Name
			}
			out[name] = f.Type
		}
	}
	add(t)
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
	if n.Kind != yaml.MappingNode {
		w.errorf(n.Line, path, "expected a mapping, got %s", kindName(n))
		return
	}
	fields := md.Fields()
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], resolveAlias(n.Content[i+1])
		p := join(path, k.Value)
		w.lines[p] = k.Line
		fd := fields.ByJSONName(k.Value)
		if fd == nil {
			fd = fields.ByName(protoreflect.Name(k.Value))
		}
		if fd == nil {
			w.errorf(k.Line, p, "unknown field %q", k.Value)
			continue
		}
		if isNull(v) {
			continue
		}
		switch {
		case fd.IsMap():
			if v.Kind != yaml.MappingNode {
				w.errorf(v.Line, p, "expected a mapping, got %s", kindName(v))
				continue
			}
			for j := 0; j+1 < len(v.Content); j += 2 {
				mk, mv := v.Content[j], v.Content[j+1]
				mp := p + "[" + mk.Value + "]"
				w.lines[mp] = mk.Line
				w.walkProtoValue(mv, fd.MapValue(), mp)
			}
		case fd.IsList():
			if v.Kind != yaml.SequenceNode {
				w.errorf(v.Line, p, "expected a list, got %s", kindName(v))
				continue
			}
			for j, c := range v.Content {
				ip := fmt.Sprintf("%s[%d]", p, j)
				w.lines[ip] = c.Line
				w.walkProtoValue(c, fd, ip)
			}
		default:
			w.walkProtoValue(v, fd, p)
		}
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
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!int" {
			return
		}
		values := fd.Enum().Values()
		if n.Kind != yaml.ScalarNode || values.ByName(protoreflect.Name(n.Value)) == nil {
			var names []string
			for i := 0; i < values.Len(); i++ {
				names = append(names, string(values.Get(i).Name()))
			}
			w.errorf(n.Line, path, "unknown value %s; want one of %s", kindName(n), strings.Join(names, ", "))
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
	default: // integers
		w.expectScalar(n, path, "!!int", "an integer")
	}
}
