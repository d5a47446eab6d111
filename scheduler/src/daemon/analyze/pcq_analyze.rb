# pcq's static analysis of a Puppet environment, run with Puppet's own Ruby
# and parser. For every class, defined type, template and function it
# reports the fact paths its code can read (with file and line), the
# widenings that make it read "any fact" (with their cause), and every
# collector of exported resources. Sound rather than precise: whatever
# cannot be resolved statically widens, never narrows.
#
# Invocation (the script on stdin; pcq embeds it and pipes it to `ruby -`):
#
#   ruby - ENVDIR [MODULEDIR...] [--hiera=GLOBAL_HIERA_YAML]...
#
#   ENVDIR     the environment: manifests/**/*.pp, hiera.yaml and its data,
#              environment.conf's `modulepath` (default `modules`, then the
#              MODULEDIRs, which stand for `$basemodulepath`)
#   MODULEDIR  Puppet's basemodulepath directories
#   --hiera=   global hiera.yaml files (repeatable), read for every node
#
# Output: one JSON object on stdout, with these keys in this order:
#
#   classes       {name => unit}   classes, by lower-case name without "::"
#   defines       {name => unit}   defined types, likewise
#   global        unit             code every node runs: the site manifests,
#                                  module code outside any definition,
#                                  global and environment Hiera; unparsable
#                                  module manifests widen it too
#   templates     {"module/path/in/templates" => unit}   ERB and EPP templates
#   functions     {name => unit}   Puppet-language and Ruby functions
#   module_hiera  {module => unit} each module's Hiera layer (hiera.yaml and
#                                  its data)
#   collectors    [collector]      every `Type <<| query |>>`
#   errors        [{"file", "message"}]   files the parser refused (each
#                                  also widens the unit it would fill)
#   files         integer          files read
#   modules       [directory name] the modules found on the module path,
#                                  in module path order, first one wins
#   seconds       float            wall time of the analysis
#
# A unit (`any_template` and `any_epp` only when set, after the others):
#
#   facts              [{"path": "os.family", "file", "line"}]  dotted fact
#                      paths read
#   all                [{"cause", "file", "line"}]  widenings: the unit may
#                      read any fact (line 0: the whole file)
#   templates          ["module/file.erb"]  templates rendered by literal name
#   functions          [name]  functions called, lower-case (every call,
#                      `include` and `lookup` too)
#   template_prefixes  ["module/dir/"]  templates named by a computed string
#                      with a known start: any template under it
#   any_template       cause: template() of a name computed at run time
#   any_epp            cause: epp() of a name computed at run time
#
# A collector:
#
#   {"kind": "class" | "define" | "global", "name": the enclosing class or
#    defined type as written, lower-cased ("" for global), "type": the
#    collected type as written ("Concat::Fragment"), "query": Q, "file", "line"}
#
#   Q = {"all": true}                      (`<<| |>>`)
#     | {"and": [Q, Q]} | {"or": [Q, Q]}
#     | {"op": "==" | "!=", "attr", "value"}
#     | {"unknown": true}                   (anything else)
#
# Structure: PcqAnalyze::Main.run drives it; Environment finds the modules;
# Scanner reads each kind of file into a Result (the document being built);
# Walker walks the Puppet model of one .pp or .epp file; ErbScan reads ERB
# text; Modules scans the modules in forked workers and merges their
# Results in a fixed order.
require 'json'
require 'puppet'
require 'yaml'
require 'etc'

module PcqAnalyze
  # Variables Puppet sets that are not facts.
  NOT_FACTS = %w[
    facts trusted title name module_name caller_module_name environment server_facts
    serverip servername serverversion settings clientcert_hash calling_module calling_class
    calling_class_path
  ].freeze

  # The tables of units by name: what a worker hands back, and how a unit
  # is named across the pipe.
  UNIT_KINDS = %w[classes defines templates functions module_hiera].freeze

  # --- the document being built ------------------------------------------------

  # The JSON document, plus what is resolved once every file is read: the
  # values assigned to class variables, and the inline_template() texts
  # held in class variables.
  class Result
    def self.new_unit
      { 'facts' => [], 'all' => [], 'templates' => [], 'functions' => [], 'template_prefixes' => [] }
    end

    # The document (see the header).
    attr_reader :out
    # class variable -> values assigned (nil: not a literal, or a parameter)
    attr_reader :class_vars
    # [unit, class variable, file, line] of inline_template() texts held in variables
    attr_reader :pending_erb

    def initialize
      @out = {
        'classes' => {}, 'defines' => {}, 'global' => Result.new_unit,
        'templates' => {}, 'functions' => {}, 'module_hiera' => {}, 'collectors' => [], 'errors' => [], 'files' => 0
      }
      @class_vars = Hash.new { |h, k| h[k] = [] }
      @pending_erb = []
    end

    def unit(kind, name)
      @out[kind][name] ||= Result.new_unit
    end

    def global
      @out['global']
    end

    def count_file
      @out['files'] += 1
    end

    def fact(unit, path, file, line)
      unit['facts'] << { 'path' => path, 'file' => file, 'line' => line }
    end

    def widen(unit, cause, file, line)
      unit['all'] << { 'cause' => cause, 'file' => file, 'line' => line }
    end

    # A file the parser refused: an error, and a widening of its unit.
    def unparsable(unit, file, error)
      message = error.message.lines.first.to_s.strip
      @out['errors'] << { 'file' => file, 'message' => message }
      widen(unit, "unparsable: #{message}", file, 0)
    end

    # What ERB `text` reads, all at `file`:`line`.
    def erb(unit, text, file, line)
      ErbScan.scan(text).each do |kind, value|
        case kind
        when :fact then fact(unit, value.join('.'), file, line)
        when :function then unit['functions'] << value
        else widen(unit, value, file, line)
        end
      end
    end

    # ERB texts held in class variables: every literal the variable may
    # hold is scanned; one that is not a literal (or a parameter) widens.
    def resolve_pending_erb
      @pending_erb.each do |unit, var, file, line|
        texts = var_texts(var)
        if texts.nil?
          widen(unit, "inline_template() of $#{var}, not a literal", file, line)
        else
          texts.each { |text| erb(unit, text, file, line) }
        end
      end
    end

    # Every text a class variable may hold, or nil when that is not bounded.
    def var_texts(var, seen = {})
      return nil if seen[var] # a cycle
      values = @class_vars.fetch(var, [])
      return nil if values.empty? || values.any?(&:nil?)
      seen = seen.merge(var => true)
      texts = []
      values.each do |parts|
        combos = ['']
        parts.each do |kind, v|
          options = kind == :text ? [v] : var_texts(v, seen)
          return nil unless options
          combos = combos.product(options).map(&:join)
          return nil if combos.length > 64
        end
        texts.concat(combos)
      end
      texts
    end

    # --- across the pipe from a worker ---

    # What a worker hands back: its document, its class variables, and its
    # pending ERB texts with their unit named by kind and name.
    def part
      ids = unit_ids
      {
        out: @out,
        class_vars: Hash[@class_vars],
        pending: @pending_erb.map { |t, var, file, line| [ids.fetch(t.object_id), var, file, line] },
      }
    end

    def merge_part(part)
      out = part[:out]
      merge_unit(global, out['global'])
      UNIT_KINDS.each { |k| out[k].each { |name, u| merge_unit(unit(k, name), u) } }
      @out['collectors'].concat(out['collectors'])
      @out['errors'].concat(out['errors'])
      @out['files'] += out['files']
      part[:class_vars].each { |var, values| @class_vars[var].concat(values) }
      part[:pending].each { |where, var, file, line| @pending_erb << [locate_unit(where), var, file, line] }
    end

    private

    def unit_ids
      ids = { global.object_id => ['global'] }
      UNIT_KINDS.each { |k| @out[k].each { |name, u| ids[u.object_id] = [k, name] } }
      ids
    end

    def locate_unit(where)
      where == ['global'] ? global : unit(where[0], where[1])
    end

    # Lists concatenate; a scalar (`any_template`: a cause) is kept as the
    # serial scan would keep it, the last one.
    def merge_unit(into, from)
      from.each do |field, value|
        if value.is_a?(Array)
          (into[field] ||= []).concat(value)
        else
          into[field] = value
        end
      end
    end
  end

  # --- templates -----------------------------------------------------------------

  # What a piece of ERB reads.
  module ErbScan
    # [[:fact, path] | [:function, name] | [:widen, cause]]
    def self.scan(text)
      found = []
      text.scan(/@([a-z_][a-zA-Z0-9_]*)(?:\[['"]([^'"]+)['"]\](?:\[['"]([^'"]+)['"]\])?)?/) do |var, k1, k2|
        if var == 'facts'
          found << (k1 ? [:fact, [k1, k2].compact] : [:widen, '@facts used as a whole'])
        elsif !NOT_FACTS.include?(var)
          found << [:fact, [var]]
        end
      end
      text.scan(/scope(?:\.lookupvar\(|\[)\s*(['"]?)([^'")\]]*)\1\s*[)\]]/) do |quote, name|
        if quote.empty?
          found << [:widen, 'scope lookup of a name computed at run time']
        else
          bare = name.sub(/\A::/, '')
          found << [:fact, [bare]] unless bare.include?('::') || NOT_FACTS.include?(bare)
        end
      end
      text.scan(/has_variable\?\(\s*['"]:{0,2}([a-z_][a-zA-Z0-9_]*)['"]\s*\)/) do |(var)|
        found << [:fact, [var]] unless NOT_FACTS.include?(var)
      end
      text.scan(/scope\.(?:call_function\(\s*['"]([a-z0-9_:]+)['"]|function_([a-z0-9_]+))/) do |a, b|
        found << [:function, (a || b).downcase]
      end
      found << [:widen, 'scope.to_hash'] if text.include?('scope.to_hash') || text.include?('scope.all_local')
      found
    end
  end

  # --- Puppet code -----------------------------------------------------------

  # Walks the model of one .pp or .epp file into a Result.
  class Walker
    M = Puppet::Pops::Model

    # The definitions that own the code in them (a unit each).
    UNITS = {
      M::HostClassDefinition => 'classes',
      M::ResourceTypeDefinition => 'defines',
      M::FunctionDefinition => 'functions',
    }.freeze

    # Where names are bound: parameters stop at these.
    DEFINITIONS = [M::HostClassDefinition, M::ResourceTypeDefinition, M::FunctionDefinition, M::NodeDefinition].freeze

    # Scopes of local assignments.
    SCOPES = (DEFINITIONS + [M::LambdaExpression]).freeze

    # What owns a collector.
    COLLECTOR_OWNERS = [M::HostClassDefinition, M::ResourceTypeDefinition, M::NodeDefinition].freeze

    def self.unit_name(definition)
      definition.name.downcase.sub(/\A::/, '')
    end

    # `target_for_toplevel`: the unit of code outside any definition.
    # `module_name`: the module the file is in (nil for the site manifests).
    def initialize(result, file, program, target_for_toplevel, module_name)
      @result = result
      @file = file
      @module = module_name
      @program = program
      @locator = program.respond_to?(:locator) ? program.locator : nil
      @toplevel = target_for_toplevel
    end

    def walk
      # first pass: assignments per scope (with their offsets)
      @assigned = Hash.new { |h, k| h[k] = [] }
      path = []
      @program._pcore_all_contents(path) do |o|
        next unless o.is_a?(M::AssignmentExpression) && o.left_expr.is_a?(M::VariableExpression)
        name = literal(o.left_expr.expr)
        next unless name
        scope = scope_of(path)
        @assigned[scope] << [name, o.offset || 0]
        if scope.is_a?(M::HostClassDefinition)
          # class variables: their possible values, nil when not a literal
          @result.class_vars["#{Walker.unit_name(scope)}::#{name}"] << text_parts(o.right_expr, path)
        end
      end
      path = []
      @program._pcore_all_contents(path) do |o|
        visit(o, path)
      end
    end

    private

    def line(o)
      return 0 unless @locator && o.respond_to?(:offset) && o.offset
      @locator.line_for_offset(o.offset)
    rescue StandardError
      0
    end

    def any_of?(o, kinds)
      kinds.any? { |k| o.is_a?(k) }
    end

    # The unit (class/define/function/template/global) code at `path` belongs to.
    def target(path)
      path.reverse_each do |c|
        UNITS.each { |klass, kind| return @result.unit(kind, Walker.unit_name(c)) if c.is_a?(klass) }
      end
      @toplevel
    end

    def fact(t, path_parts, o)
      @result.fact(t, path_parts.join('.'), @file, line(o))
    end

    def widen(t, cause, o)
      @result.widen(t, cause, @file, line(o))
    end

    def literal(o)
      case o
      when M::LiteralString then o.value
      when M::ConcatenatedString
        parts = o.segments.map { |s| segment(s) }
        parts.all? ? parts.join : nil
      when M::QualifiedName then o.value
      end
    end

    # A string segment's text when it is known statically: literal text, or
    # `${module_name}`, which is the module the file is in.
    def segment(s)
      return s.value if s.is_a?(M::LiteralString)
      return nil unless @module && s.is_a?(M::TextExpression)
      e = s.expr
      e = e.expr if e.is_a?(M::VariableExpression)
      e.is_a?(M::QualifiedName) && e.value == 'module_name' ? @module : nil
    end

    # The statically known start of a string ("apache/mod/" of
    # "apache/mod/${name}.conf.erb"), if it names a module directory.
    def literal_prefix(o)
      return nil unless o.is_a?(M::ConcatenatedString)
      prefix = ''
      o.segments.each do |s|
        text = segment(s)
        break unless text
        prefix += text
      end
      prefix.include?('/') ? prefix : nil
    end

    # Names bound locally before `use` in the scopes around it: parameters
    # of the enclosing definition or lambdas, assignments before it.
    def local?(name, use, path)
      path.reverse_each do |c|
        params = c.respond_to?(:parameters) ? Array(c.parameters) : []
        return true if params.any? { |p| p.name == name }
        break if any_of?(c, DEFINITIONS)
      end
      @assigned.fetch(scope_of(path), []).any? { |(n, off)| n == name && off < (use.offset || 0) }
    end

    def scope_of(path)
      path.reverse_each do |c|
        return c if any_of?(c, SCOPES)
      end
      @program
    end

    def visit(o, path)
      case o
      # every definition is known, even one that reads nothing
      when M::HostClassDefinition
        name = Walker.unit_name(o)
        @result.unit('classes', name)
        # a parameter's value can come from anywhere
        Array(o.parameters).each { |p| @result.class_vars["#{name}::#{p.name}"] << nil }
      when M::ResourceTypeDefinition then @result.unit('defines', Walker.unit_name(o))
      when M::FunctionDefinition then @result.unit('functions', Walker.unit_name(o))
      when M::VariableExpression then variable(o, path)
      when M::CallNamedFunctionExpression then call(o, path)
      when M::CollectExpression then collector(o, path)
      end
    end

    # $facts[...][...], $facts.dig(...), $::x, $x (top scope)
    def variable(o, path)
      name = literal(o.expr)
      return unless name
      t = target(path)
      parent = path[-1]
      if name == 'facts' || name == '::facts'
        facts_access(o, path, t)
      elsif name.start_with?('::')
        bare = name[2..]
        fact(t, [bare], o) unless bare.include?('::') || NOT_FACTS.include?(bare)
      elsif !name.include?('::') && name !~ /\A\d+\z/ && !NOT_FACTS.include?(name)
        return if parent.is_a?(M::AssignmentExpression) && parent.left_expr.equal?(o)
        fact(t, [name], o) unless local?(name, o, path)
      end
    end

    def facts_access(o, path, t)
      parts = []
      node = o
      i = path.length - 1
      loop do
        parent = path[i]
        if parent.is_a?(M::AccessExpression) && parent.left_expr.equal?(node)
          key = parent.keys.length == 1 ? literal(parent.keys[0]) : nil
          return widen(t, '$facts[...] with a key computed at run time', parent) unless key
          parts << key
          node = parent
          i -= 1
        elsif parent.is_a?(M::NamedAccessExpression) && parent.left_expr.equal?(node) &&
              path[i - 1].is_a?(M::CallMethodExpression) && literal(parent.right_expr) == 'dig'
          call = path[i - 1]
          keys = call.arguments.map { |a| literal(a) }
          return widen(t, '$facts.dig(...) with a key computed at run time', call) if keys.any?(&:nil?)
          parts.concat(keys)
          break
        else
          break
        end
      end
      if parts.empty?
        widen(t, '$facts used as a whole', o)
      else
        fact(t, parts, o)
      end
    end

    def call(o, path)
      fname = literal(o.functor_expr)
      return unless fname
      t = target(path)
      args = o.arguments
      case fname
      when 'template', 'epp' then template_call(fname, args, t, o)
      when 'inline_template' then inline_template(args, t, o, path)
      when 'inline_epp'
        widen(t, 'inline_epp()', o)
      when 'getvar'
        name = args[0] && literal(args[0])
        return widen(t, 'getvar() of a name computed at run time', o) unless name
        name = name.sub(/\A::/, '')
        if name.start_with?('facts.')
          fact(t, name.split('.')[1..], o)
        elsif !name.include?('::')
          fact(t, name.split('.'), o) unless NOT_FACTS.include?(name.split('.')[0])
        end
      when 'fact'
        name = args[0] && literal(args[0])
        name ? fact(t, name.split('.'), o) : widen(t, 'fact() of a name computed at run time', o)
      else
        t['functions'] << fname.downcase.sub(/\A::/, '')
      end
    end

    # template(name...) or epp(name, params)
    def template_call(fname, args, t, o)
      names = fname == 'epp' ? args.first(1) : args
      names.each do |a|
        name = literal(a)
        prefix = name ? nil : literal_prefix(a)
        if name
          t['templates'] << name
        elsif prefix
          # one of the templates under a known directory
          t['template_prefixes'] << prefix
        else
          # the template is one of the environment's, which one is known
          # only at run time: count every template's reads
          key = fname == 'epp' ? 'any_epp' : 'any_template'
          t[key] = "#{fname}() of a name computed at run time (#{@file}:#{line(o)})"
        end
      end
    end

    def inline_template(args, t, o, path)
      args.each do |a|
        text = literal(a)
        next erb_scan(text, t, o) if text
        parts = a.is_a?(M::ConcatenatedString) ? a.segments : [a]
        parts.each do |part|
          part = part.expr if part.is_a?(M::TextExpression)
          if part.is_a?(M::LiteralString)
            erb_scan(part.value, t, o)
          elsif (var = class_variable(part, path))
            # resolved at the end, once every class's assignments are known
            @result.pending_erb << [t, var, @file, line(o)]
          else
            widen(t, 'inline_template() of text computed at run time', o)
          end
        end
      end
    end

    # A string as [[:text, "..."] | [:var, "class::var"]], nil if it is
    # anything else.
    def text_parts(o, path)
      return [[:text, o.value]] if o.is_a?(M::LiteralString)
      return nil unless o.is_a?(M::ConcatenatedString)
      parts = o.segments.map do |s|
        s = s.expr if s.is_a?(M::TextExpression)
        if s.is_a?(M::LiteralString)
          [:text, s.value]
        elsif (var = class_variable(s, path))
          [:var, var]
        end
      end
      parts.all? ? parts : nil
    end

    # `$a::b::c`, or `$c` inside class a::b: the class variable's full name.
    def class_variable(o, path)
      return nil unless o.is_a?(M::VariableExpression)
      name = literal(o.expr)
      return nil unless name
      name = name.sub(/\A::/, '')
      return name if name.include?('::')
      klass = path.reverse_each.find { |c| c.is_a?(M::HostClassDefinition) }
      klass ? "#{Walker.unit_name(klass)}::#{name}" : nil
    end

    def erb_scan(text, t, o)
      @result.erb(t, text, @file, line(o))
    end

    def collector(o, path)
      q = o.query
      return unless q.is_a?(M::ExportedQuery)
      owner = path.reverse_each.find { |c| any_of?(c, COLLECTOR_OWNERS) }
      kind, name =
        case owner
        when M::HostClassDefinition then ['class', owner.name.downcase]
        when M::ResourceTypeDefinition then ['define', owner.name.downcase]
        else ['global', '']
        end
      type = o.type_expr.respond_to?(:cased_value) ? o.type_expr.cased_value : literal(o.type_expr).to_s
      @result.out['collectors'] << {
        'kind' => kind, 'name' => name, 'type' => type, 'query' => query(q.expr),
        'file' => @file, 'line' => line(o)
      }
    end

    def query(e)
      case e
      when nil then { 'all' => true }
      when M::ParenthesizedExpression then query(e.expr)
      when M::AndExpression then { 'and' => [query(e.left_expr), query(e.right_expr)] }
      when M::OrExpression then { 'or' => [query(e.left_expr), query(e.right_expr)] }
      when M::ComparisonExpression
        attr = literal(e.left_expr)
        value = literal(e.right_expr)
        if attr && value && %w[== !=].include?(e.operator.to_s)
          { 'op' => e.operator.to_s, 'attr' => attr, 'value' => value }
        else
          { 'unknown' => true }
        end
      else { 'unknown' => true }
      end
    end
  end

  # --- files -------------------------------------------------------------------

  # Reads each kind of file into a Result.
  class Scanner
    def initialize(result)
      @result = result
    end

    def parse_pp(file, target, module_name)
      @result.count_file
      # Puppet's parser without the evaluating parser's validation pass (a
      # third of the time): the analysis reads the model, it does not judge it.
      program = Puppet::Pops::Parser::Parser.new.parse_file(file).model
      Walker.new(@result, file, program, target, module_name).walk
    rescue StandardError, SyntaxError => e
      @result.unparsable(target, file, e)
    end

    def parse_template(file, module_name)
      @result.count_file
      t = @result.unit('templates', template_name(file, module_name))
      if file.end_with?('.epp')
        begin
          program = Puppet::Pops::Parser::EvaluatingParser::EvaluatingEppParser.new.parse_file(file)
          Walker.new(@result, file, program, t, module_name).walk
        rescue StandardError, SyntaxError => e
          @result.unparsable(t, file, e)
        end
      else
        text = File.read(file, encoding: 'UTF-8', invalid: :replace)
        text.each_line.with_index(1) { |l, n| @result.erb(t, l, file, n) }
      end
    end

    # Ruby functions: literal lookups are facts; anything dynamic widens the
    # callers.
    def scan_ruby_function(file)
      @result.count_file
      text = File.read(file, encoding: 'UTF-8', invalid: :replace)
      name = text[/newfunction\(\s*:['"]?([a-z0-9_:]+)/, 1] || text[/create_function\(\s*:?['"]?([a-z0-9_:]+)/, 1] ||
             File.basename(file, '.rb')
      f = @result.unit('functions', name.downcase)
      text.each_line.with_index(1) do |l, n|
        l.scan(/lookupvar\(\s*(['"])([^'"]+)\1\s*\)/) do |_, v|
          next if v.include?('#{')
          bare = v.sub(/\A::/, '')
          @result.fact(f, bare, file, n) unless bare.include?('::') || NOT_FACTS.include?(bare)
        end
        if l =~ /lookupvar\(\s*[^'"\s]/ || l =~ /lookupvar\(\s*"[^"]*#\{/ || l.include?('to_hash') || l =~ /\[['"]facts['"]\]\[[^'"]/
          @result.widen(f, 'reads variables by a name computed at run time', file, n)
        end
        l.scan(/\[['"]facts['"]\]\[['"]([^'"]+)['"]\]/) do |(k)|
          @result.fact(f, k, file, n)
        end
      end
    end

    # A Hiera layer: its hiera.yaml, and the data under each datadir it names
    # (`data` when it names none). `target` is the unit whose nodes read
    # them: every node for the global and environment layers, the module's
    # classes for a module's layer.
    def scan_hiera(config, target)
      base = File.dirname(config)
      dirs = ['data']
      return scan_hiera_dirs(base, dirs, target) unless File.file?(config)
      scan_hiera_file(config, target)
      begin
        doc = YAML.safe_load(File.read(config), aliases: true) || {}
        dirs = []
        dirs << doc.dig('defaults', 'datadir') if doc.is_a?(Hash) && doc['defaults'].is_a?(Hash)
        Array(doc.is_a?(Hash) ? doc['hierarchy'] : nil).each { |h| dirs << h['datadir'] if h.is_a?(Hash) }
        v3 = doc.is_a?(Hash) ? (doc[:yaml] || doc[':yaml'] || doc['yaml']) : nil
        dirs << (v3[:datadir] || v3[':datadir'] || v3['datadir']) if v3.is_a?(Hash)
        dirs = dirs.compact.map(&:to_s)
        dirs = ['data'] if dirs.empty?
      rescue StandardError => e
        @result.widen(target, "unreadable hiera.yaml: #{e.message.lines.first.to_s.strip}", config, 0)
      end
      scan_hiera_dirs(base, dirs, target)
    end

    def scan_module(dir, dir_name)
      name = dir_name.sub(/\A[^-]+-/, '') # "saz-rsyslog" holds module rsyslog
      Dir.glob(File.join(dir, '{manifests,functions,types,plans}', '**', '*.pp')).sort.each do |f|
        parse_pp(f, @result.global, name)
      end
      Dir.glob(File.join(dir, 'templates', '**', '*.{erb,epp}')).sort.each { |f| parse_template(f, name) }
      Dir.glob(File.join(dir, 'lib', 'puppet', '{functions,parser/functions}', '**', '*.rb')).sort.each do |f|
        scan_ruby_function(f)
      end
      scan_hiera(File.join(dir, 'hiera.yaml'), @result.unit('module_hiera', name))
    end

    private

    def template_name(file, module_name)
      "#{module_name}/#{file.split('/templates/', 2)[1]}"
    end

    # Interpolations in a hierarchy (hiera.yaml) or a data file.
    def scan_hiera_file(file, target)
      @result.count_file
      text = File.read(file, encoding: 'UTF-8', invalid: :replace)
      text.each_line.with_index(1) do |l, n|
        l.scan(/%\{\s*([^}]*)\}/) do |(expr)|
          expr = expr.strip
          if expr =~ /\A(?:facts|::facts)\.(.+)\z/
            @result.fact(target, Regexp.last_match(1).delete('"\''), file, n)
          elsif expr =~ /\A(?:facts|::facts)\z/ || expr =~ /\A(?:facts|::facts)\[/
            @result.widen(target, "hiera interpolation %{#{expr}}", file, n)
          elsif expr =~ /\A::([a-z_][a-z0-9_]*)\z/ || expr =~ /\A([a-z_][a-z0-9_]*)\z/
            name = Regexp.last_match(1)
            @result.fact(target, name, file, n) unless NOT_FACTS.include?(name)
          elsif expr.start_with?('scope(') || expr =~ /\Ascope\s*\(/
            @result.widen(target, "hiera interpolation %{#{expr}}", file, n)
          end
        end
      end
    end

    def scan_hiera_dirs(base, dirs, target)
      dirs.uniq.each do |d|
        # a datadir chosen per node (`%{...}`): scan from its fixed start
        d = d.split('%{').first.to_s
        dir = File.expand_path(d, base)
        Dir.glob(File.join(dir, '**', '*.{yaml,yml,json,eyaml}')).sort.each { |f| scan_hiera_file(f, target) }
      end
    end
  end

  # --- the environment -----------------------------------------------------------

  module Environment
    # [[directory, directory name]] of the modules on the environment's
    # module path, in its order: the first module of a name wins.
    def self.modules(env_dir, base)
      seen = {}
      mods = []
      modulepath(env_dir, base).each do |d|
        next unless File.directory?(d)
        Dir.children(d).sort.each do |m|
          next if seen[m] || !File.directory?(File.join(d, m)) || m.start_with?('.')
          seen[m] = true
          mods << [File.join(d, m), m]
        end
      end
      mods
    end

    # The environment's module path: environment.conf's `modulepath` when it
    # sets one ($basemodulepath standing for the directories given), else
    # `modules` then the directories given, as Puppet does.
    def self.modulepath(env_dir, base)
      conf = File.join(env_dir, 'environment.conf')
      line = File.file?(conf) ? File.readlines(conf).find { |l| l =~ /\A\s*modulepath\s*=/ } : nil
      return [File.join(env_dir, 'modules')] + base unless line
      line.split('=', 2)[1].strip.delete('"\'').split(':').flat_map do |d|
        d == '$basemodulepath' ? base : [File.expand_path(d, env_dir)]
      end
    end

    # The site manifests.
    def self.manifests(env_dir)
      Dir.glob(File.join(env_dir, 'manifests', '**', '*.pp')).sort
    end
  end

  # --- modules, on every core --------------------------------------------------
  #
  # Parsing is most of the time, and modules are independent: forked workers
  # (Puppet already loaded) each scan a share of them and hand back their
  # part, merged here in worker order, so the output does not depend on
  # timing. The ERB texts pending on class variables refer to their unit by
  # kind and name across the pipe.
  module Modules
    MAX_WORKERS = 4

    # Scans `mods` into `result`.
    def self.scan(result, mods)
      workers = [Etc.nprocessors, MAX_WORKERS, mods.size].min
      if workers < 2 || !Process.respond_to?(:fork)
        scanner = Scanner.new(result)
        mods.each { |dir, name| scanner.scan_module(dir, name) }
        return
      end
      children = shares(mods, workers).map { |share| fork_worker(share, mods) }
      children.each do |pid, reader|
        data = reader.read
        reader.close
        _, status = Process.wait2(pid)
        raise "module worker #{pid} failed: #{status}" unless status.success?
        result.merge_part(Marshal.load(data))
      end
    end

    # Shares balanced by file count, largest modules first.
    def self.shares(mods, workers)
      sizes = mods.map { |dir, name| [dir, name, Dir.glob(File.join(dir, '{manifests,templates}', '**', '*')).size] }
      shares = Array.new(workers) { [] }
      loads = Array.new(workers, 0)
      sizes.sort_by { |dir, _, n| [-n, dir] }.each do |dir, name, n|
        i = loads.index(loads.min)
        shares[i] << [dir, name]
        loads[i] += n
      end
      shares
    end

    # [pid, reader] of a worker scanning `share`; it writes its part
    # (Result#part, marshalled) to the reader's pipe.
    def self.fork_worker(share, mods)
      reader, writer = IO.pipe
      pid = fork do
        reader.close
        part = Result.new
        scanner = Scanner.new(part)
        # sorted back into the serial order of modules within the share
        share.sort_by { |dir, _| mods.index { |d, _| d == dir } }.each { |dir, name| scanner.scan_module(dir, name) }
        writer.write(Marshal.dump(part.part))
        writer.close
        exit!(0)
      end
      writer.close
      [pid, reader]
    end
  end

  # --- the run -----------------------------------------------------------------------

  module Main
    def self.run(argv)
      init_puppet
      started = Time.now
      env_dir = argv[0]
      options, module_dirs = (argv[1..] || []).partition { |a| a.start_with?('--') }
      global_hiera = options.filter_map { |o| o[/\A--hiera=(.+)\z/, 1] }

      result = Result.new
      scanner = Scanner.new(result)
      mods = Environment.modules(env_dir, module_dirs)
      Environment.manifests(env_dir).each { |f| scanner.parse_pp(f, result.global, nil) }
      global_hiera.each { |f| scanner.scan_hiera(f, result.global) }
      scanner.scan_hiera(File.join(env_dir, 'hiera.yaml'), result.global)
      Modules.scan(result, mods)
      result.resolve_pending_erb

      result.out['modules'] = mods.map { |_, n| n }
      result.out['seconds'] = (Time.now - started).round(3)
      puts JSON.generate(result.out)
    end

    def self.init_puppet
      Puppet.initialize_settings(['--confdir', Dir.mktmpdir('pcq-analyze'), '--vardir', Dir.mktmpdir('pcq-analyze')])
    rescue StandardError
      # already initialized, or not needed for parsing
    end
  end
end

PcqAnalyze::Main.run(ARGV)
