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
#   builtins      [name]           functions Puppet and the gems on Ruby's
#                                  load path ship (a call to a function
#                                  neither here nor among these widens)
#   seconds       float            wall time of the analysis
#
# A unit (`any_template` and `any_epp` only when set, after the others):
#
#   facts              [{"path": "os.family", "file", "line"}]  dotted fact
#                      paths read
#   all                [{"cause", "file", "line"}]  widenings: the unit may
#                      read any fact (line 0: the whole file)
#   vars               [{"path", "file", "line"}]  (ERB template files) variables
#                      of the scope the template runs in (`@name`,
#                      `scope['name']`): a fact unless the caller binds the
#                      name
#   bound              [[name]]  (classes, defined types) per template() call,
#                      the names bound where it is called: parameters, and
#                      locals assigned on every path before the call
#   template_params    [{"param": "apache::conf_template", "epp": false}]
#                      templates named by a parameter of a class or defined
#                      type: which ones a node renders is the parameter's
#                      value in its compiled catalog
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
# Walker walks the Puppet model of one .pp or .epp file; RubyScan reads
# ERB templates and Ruby functions with Ruby's parser; Modules scans the
# modules in forked workers and merges their Results in a fixed order.
require 'erb'
require 'json'
require 'ripper'
require 'puppet'
require 'yaml'
require 'etc'
require 'fileutils'
require 'tmpdir'

module PcqAnalyze
  # Variables Puppet sets that are not facts.
  NOT_FACTS = %w[
    facts trusted title name module_name caller_module_name environment server_facts
    serverip servername serverversion
  ].freeze

  # The keys of a dotted path as getvar(), fact() and Hiera write them:
  # `facts.fz_dot."k.v"` is ["facts", "fz_dot", "k.v"].
  def self.keys(path)
    path.scan(/"[^"]*"|'[^']*'|[^.]+/).map { |k| k.strip.sub(/\A(["'])(.*)\1\z/m, '\\2') }
  end

  # The tables of units by name: what a worker hands back, and how a unit
  # is named across the pipe.
  UNIT_KINDS = %w[classes defines templates functions module_hiera].freeze

  # --- the document being built ------------------------------------------------

  # The JSON document, plus what is resolved once every file is read: the
  # values assigned to class variables, and the inline_template() texts
  # held in class variables.
  class Result
    def self.new_unit
      {
        'facts' => [], 'all' => [], 'templates' => [], 'functions' => [], 'template_prefixes' => [],
        'vars' => [], 'bound' => [], 'template_params' => [], 'opens' => []
      }
    end

    # The document (see the header).
    attr_reader :out
    # class variable -> values assigned (nil: not a literal, or a parameter)
    attr_reader :class_vars
    # [unit, class variable, file, line] of inline_template() texts held in variables
    attr_reader :pending_erb
    # [unit, class variable, epp?, cause] of template()/epp() calls naming
    # their template by a class variable
    attr_reader :pending_templates
    # "class::param" of every class parameter
    attr_reader :params

    def initialize
      @out = {
        'classes' => {}, 'defines' => {}, 'global' => Result.new_unit,
        'templates' => {}, 'functions' => {}, 'module_hiera' => {}, 'collectors' => [], 'errors' => [], 'files' => 0,
        'provides' => {}
      }
      @class_vars = Hash.new { |h, k| h[k] = [] }
      @pending_erb = []
      @pending_templates = []
      @params = {}
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

    # What `file` gives the code, for deploys: a unit it defines or feeds
    # (`class:apache`, `template:ntp/ntp.conf.erb`, `module_hiera:ntp`),
    # `alias:name` (a type alias), `global` (what every node reads: site
    # manifests, node definitions, top-level code, environment and global
    # Hiera) or `unparsable`. A deploy that changes the file recompiles the
    # nodes whose catalogs reach what it gives.
    def provide(file, what)
      list = (@out['provides'][file] ||= [])
      list << what unless list.include?(what)
    end

    # A read of the fact at `keys` (["os", "family"]). pcq's paths are
    # dotted, so a key that holds a dot (or is not a string) ends the path
    # at its parent, read whole; with no parent left it widens.
    def fact(unit, keys, file, line)
      keys = keys.map(&:to_s)
      kept = keys.take_while { |k| !k.empty? && !k.include?('.') }
      return widen(unit, "a fact named #{keys.first.inspect}, which pcq's dotted paths cannot name", file, line) if kept.empty?
      unit['facts'] << { 'path' => kept.join('.'), 'file' => file, 'line' => line }
    end

    def widen(unit, cause, file, line)
      unit['all'] << { 'cause' => cause, 'file' => file, 'line' => line }
    end

    # Code the analysis cannot follow (a function or template named at run
    # time, a backend it does not read): any fact, and, for deploys, any
    # code (the unit's nodes recompile on every deploy).
    def opens(unit, cause, file, line)
      widen(unit, cause, file, line)
      unit['opens'] << { 'cause' => cause, 'file' => file, 'line' => line }
    end

    # A file the parser refused: an error, and a widening of its unit.
    def unparsable(unit, file, error)
      message = error.message.lines.first.to_s.strip
      @out['errors'] << { 'file' => file, 'message' => message }
      opens(unit, "unparsable: #{message}", file, 0)
    end

    # What ERB `text` reads: at `file`:`line` (an inline template), or at
    # its own lines (`line` nil: a template file). `bound`: the names the
    # calling scope binds (an inline template), :caller (a template file:
    # its callers are known later), or nil (unknown: every variable may be
    # a fact).
    def erb(unit, text, file, line = nil, bound = nil)
      ruby_reads(unit, RubyScan.erb(text), file, line, bound)
    end

    # Records what RubyScan found; `line` overrides the lines it found.
    def ruby_reads(unit, found, file, line = nil, bound = nil)
      found.each do |kind, value, at|
        at = line || at
        case kind
        when :var
          if bound == :caller
            unit['vars'] << { 'path' => value.join('.'), 'file' => file, 'line' => at }
          elsif !(bound && bound.include?(value[0]))
            fact(unit, value, file, at)
          end
        when :fact then fact(unit, value, file, at)
        when :function then unit['functions'] << value
        when :template then unit['templates'] << value
        when :any_template, :any_epp then unit[kind.to_s] = "#{value} (#{file}:#{at})"
        when :opens then opens(unit, value, file, at)
        else widen(unit, value, file, at)
        end
      end
    end

    # ERB texts held in class variables: every literal the variable may
    # hold is scanned; one that is not a literal (or a parameter) widens.
    def resolve_pending_erb
      @pending_erb.each do |unit, var, file, line|
        texts = var_texts(var)
        if texts.nil?
          opens(unit, "inline_template() of $#{var}, not a literal", file, line)
        else
          texts.each { |text| erb(unit, text, file, line) }
        end
      end
    end

    # Templates named by a class variable: the literal names it may hold;
    # a class parameter's value is read from each node's catalog; anything
    # else may be any template.
    def resolve_pending_templates
      @pending_templates.each do |unit, var, epp, cause|
        texts = var_texts(var)
        if texts
          texts.each { |name| unit['templates'] << name }
        elsif @params[var]
          unit['template_params'] << { 'param' => var, 'epp' => epp }
        else
          unit[epp ? 'any_epp' : 'any_template'] = cause
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
        pending_templates: @pending_templates.map { |t, var, epp, cause| [ids.fetch(t.object_id), var, epp, cause] },
        params: @params,
      }
    end

    def merge_part(part)
      out = part[:out]
      merge_unit(global, out['global'])
      UNIT_KINDS.each { |k| out[k].each { |name, u| merge_unit(unit(k, name), u) } }
      @out['collectors'].concat(out['collectors'])
      @out['errors'].concat(out['errors'])
      @out['files'] += out['files']
      out['provides'].each { |file, list| list.each { |what| provide(file, what) } }
      part[:class_vars].each { |var, values| @class_vars[var].concat(values) }
      part[:pending].each { |where, var, file, line| @pending_erb << [locate_unit(where), var, file, line] }
      part[:pending_templates].each { |where, var, epp, cause| @pending_templates << [locate_unit(where), var, epp, cause] }
      @params.merge!(part[:params])
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

  # --- Ruby that runs against a scope: ERB templates, Ruby functions -------------
  #
  # Read with Ruby's own parser (Ripper), sound by construction: a read is
  # recorded when its form is fully resolved (a literal path into the facts,
  # a top-scope variable by literal name, a function by literal name), and
  # every other access to the scope widens, with the form and its line;
  # nothing that reaches the scope is dropped. A literal path that stops
  # early (`@facts['os'][k]`) is a read of what it reached (`os`, whole).
  #
  # Ruby runs in one of three modes: :erb (self is Puppet's template
  # wrapper, scope variables are `@`-variables), :function3 (self is the
  # scope), :function4 (the scope is `closure_scope`, or a `scope_param`).
  module RubyScan
    # Scope methods that read no variable: logging, the function calls
    # handled on their own, the environment, and resources of the catalog
    # (whose values came from code the catalog's analysis already counts).
    SCOPE_SAFE = %w[
      debug info notice warning err alert emerg crit deprecation_warning call_function
      environment tags raise_error source resource findresource lookupdefaults setvar catalog
    ].freeze

    # Methods a whole scope may be handed to: the function's own dispatcher,
    # and Puppet's type lookups, which read the environment, not variables.
    SCOPE_TAKERS = %w[
      dispatch parse find_resource_type_or_class find_resource_type find_hostclass find_definition
    ].freeze

    # Methods that hand out a scope (from a resource, the compiler, a
    # context): a chain through one of them reaches variables.
    REACH_SCOPE = %w[scope topscope closure_scope newscope interpolate].freeze

    # Calls that reach variables by a name computed at run time, in any mode.
    REFLECTION = %w[
      instance_variables instance_variable_get binding eval instance_eval instance_exec
      send public_send __send__ method methods
    ].freeze

    # Methods of Puppet's scope (on self in a 3.x function), known once
    # Puppet is loaded.
    def self.scope_methods
      @scope_methods ||= begin
        (Puppet::Parser::Scope.public_instance_methods(true) - Object.public_instance_methods).map(&:to_s)
      rescue StandardError
        %w[lookupvar [] to_hash compiler catalog include? exist? setvar]
      end
    end

    # [[:fact, [keys], line] | [:function, name, line] | [:widen, cause, line]]
    def self.erb(text)
      src = ERB.new(text, trim_mode: '-').src
      # ERB's code keeps the template's lines, after a `#coding` line
      shift = src.start_with?('#coding') ? 1 : 0
      code(src, :erb).map { |kind, value, line| [kind, value, [line - shift, 1].max] }
    rescue StandardError, SyntaxError => e
      [[:widen, "ERB the parser refused: #{e.message.lines.first.to_s.strip}", 0]]
    end

    def self.code(src, mode)
      sexp = Ripper.sexp(src)
      return [[:widen, 'Ruby the parser refused', 0]] unless sexp
      found = Walk.new(mode).run(sexp)
      if mode == :function4 && src.include?('scope_param') && src !~ /def\s+\w+[?!]?\s*\(?\s*scope\b/
        found << [:widen, 'scope_param bound to a parameter not named scope', 0]
      end
      found
    end

    # Walks one Ripper tree.
    class Walk
      # Nodes a whole scope or facts hash may be handed to without widening:
      # lists, `+`, parentheses on the way to an assignment or a call.
      PASS_THROUGH = %i[array args_add_block arg_paren args_add_star binary paren].freeze

      def initialize(mode)
        @mode = mode
        @found = []
        @parents = []
        # locals that hold the scope or the facts hash: name => :scope | :facts
        @aliases = {}
        @own_methods = SCOPE_TAKERS.dup
      end

      # A first walk finds the methods defined here and the locals that hold
      # the scope or the facts (wherever they are assigned); the second
      # records what is read.
      def run(sexp)
        collect_defs(sexp)
        visit(sexp)
        # again while new locals turn out to hold the scope or the facts
        4.times do
          break if @aliases.empty?
          known = @aliases.dup
          @found = []
          visit(sexp)
          break if @aliases == known
        end
        @found
      end

      private

      # The methods defined here, with their parameters' names.
      def collect_defs(n)
        return unless n.is_a?(Array)
        if n[0] == :def
          @own_methods << name_of(n[1])
          (@def_params ||= {})[name_of(n[1])] = idents(n[2])
        end
        n.each { |c| collect_defs(c) }
      end

      def idents(n)
        return [] unless n.is_a?(Array)
        return [n[1]] if n[0] == :@ident
        n.flat_map { |c| idents(c) }
      end

      def visit(n)
        return unless n.is_a?(Array)
        return if n[0].is_a?(Symbol) && chain(n)
        @parents.push(n)
        n.each { |c| visit(c) if c.is_a?(Array) }
        @parents.pop
      end

      # Where a whole value at `n` goes: [:local, name] (assigned to a
      # local), [:call, method] (an argument), or nil (anywhere else).
      # [:call, method, index]: the argument's position, nil when it is
      # inside a list or a sum.
      def destination(n)
        child = n
        index = nil
        wrapped = false
        @parents.reverse_each do |p|
          kind = p[0]
          if !kind.is_a?(Symbol) || PASS_THROUGH.include?(kind)
            wrapped ||= %i[array binary].include?(kind)
            index ||= p.index { |x| x.equal?(child) } if !kind.is_a?(Symbol) && !wrapped
            child = p
            next
          end
          case kind
          when :assign
            target = p[1]
            return nil unless p[2].equal?(child) && target[0] == :var_field && target[1].is_a?(Array) && target[1][0] == :@ident
            return [:local, target[1][1]]
          when :method_add_arg
            callee = p[1]
            return [:call, name_of(callee[0] == :fcall ? callee[1] : callee[3]), index]
          when :command then return [:call, name_of(p[1]), index]
          when :command_call then return [:call, name_of(p[3]), index]
          else return nil
          end
        end
        nil
      end

      # A whole scope or facts hash (`kind`) at `n`: kept when it goes into
      # a local (which then stands for it) or to this file's own methods;
      # anything else widens.
      def whole(kind, n, line, cause)
        to = destination(n)
        if to && to[0] == :local
          @aliases[to[1]] = kind
        elsif to && to[0] == :call && kind == :scope && @own_methods.include?(to[1])
          # this file's own method: the parameter at that position holds
          # the scope (any of them when the position is not known)
          params = (@def_params || {}).fetch(to[1], [])
          params = [params[to[2]] || params.last].compact if to[2]
          params.each { |p| @aliases[p] = :scope }
        else
          widen(cause, line)
        end
      end

      # The first [line, column] in a tree.
      def line_of(n)
        return 0 unless n.is_a?(Array)
        return n[0] if n.length == 2 && n.all?(Integer)
        n.each do |c|
          l = line_of(c)
          return l if l.positive?
        end
        0
      end

      def name_of(token)
        token.is_a?(Array) ? token[1].to_s : token.to_s
      end

      # The argument nodes of an argument list, or nil when they cannot be
      # listed (a splat).
      def args_of(a)
        return [] if a.nil? || a == false
        case a[0]
        when :arg_paren then args_of(a[1])
        when :args_add_block then args_of(a[1])
        # `f(a, *rest)`: the splat counts as one argument
        when :args_add_star then (args_of(a[1]) || []) + a[2..]
        when Symbol then [a]
        else a
        end
      end

      def literal(n)
        return nil unless n.is_a?(Array)
        case n[0]
        when :string_literal
          parts = n[1].is_a?(Array) ? n[1][1..] : []
          return nil unless parts.all? { |p| p.is_a?(Array) && p[0] == :@tstring_content }
          parts.map { |p| p[1] }.join
        when :symbol_literal
          s = n[1]
          s = s[1] if s.is_a?(Array) && s[0] == :symbol
          s.is_a?(Array) && %i[@ident @const @kw].include?(s[0]) ? s[1] : nil
        end
      end

      # One step down a postfix chain: [receiver, [method, args], blocks].
      # args nil: not listable. nil when `n` is a chain's base.
      def step(n)
        case n[0]
        when :aref then [n[1], ['[]', args_of(n[2])]]
        when :call, :field
          n[3] == :call ? [n[1], ['call', []]] : [n[1], [name_of(n[3]), []]]
        when :command_call then [n[1], [name_of(n[3]), args_of(n[4])]]
        when :method_add_arg
          inner = n[1]
          args = args_of(n[2])
          case inner[0]
          when :call then [inner[1], [inner[3] == :call ? 'call' : name_of(inner[3]), args]]
          when :fcall then [[:pcq_self_call, name_of(inner[1]), args], nil]
          end
        when :method_add_block then [n[1], nil, n[2]]
        end
      end

      # A chain from its outermost node: [base, ops, extra nodes to visit].
      def unroll(n)
        ops = []
        extra = []
        loop do
          s = step(n)
          break unless s
          n, op, block = s
          ops.unshift(op) if op
          extra << block if block
        end
        n = [:pcq_self_call, name_of(n[1]), args_of(n[2])] if n[0] == :command
        n = [:pcq_self_call, name_of(n[1]), []] if %i[fcall vcall].include?(n[0])
        [n, ops, extra]
      end

      # Handles `n` if it is a chain on something that reaches the scope;
      # false to let the walk go on into it.
      def chain(n)
        base, ops, extra = unroll(n)
        line = line_of(n)
        @node = n
        handled =
          case base[0]
          when :var_ref then var_chain(base, ops, line)
          when :pcq_self_call then self_call_chain(base, ops, line)
          when :top_const_ref then const_chain(name_of(base[1]), ops, line)
          when :const_path_ref then const_chain(name_of(base[2]), ops, line)
          end
        if !handled && (reach = ops.find { |o, _| REACH_SCOPE.include?(o) })
          widen(".#{reach[0]} (a scope reached from another object)", line)
          handled = true
        end
        return false unless handled
        visit(base[2]) if base[0] == :pcq_self_call && base[2]
        ops.each { |_, args| args&.each { |a| visit(a) } }
        extra.each { |e| visit(e) }
        true
      end

      def var_chain(base, ops, line)
        token = base[1]
        return false unless token.is_a?(Array)
        case token[0]
        when :@ivar
          # in a 3.x function self is the scope: its own state
          if @mode == :function3
            widen("#{token[1]} (the scope's own state)", line)
            return true
          end
          return false unless @mode == :erb
          ivar(token[1][1..], ops, line)
        when :@ident
          kind = token[1] == 'scope' ? :scope : @aliases[token[1]]
          return false unless kind
          kind == :scope ? scope(ops, line, token[1]) : facts(ops, line, token[1])
        when :@kw
          return false unless token[1] == 'self'
          return self_chain(ops, line)
        when :@const then return const_chain(token[1], ops, line)
        else return false
        end
        true
      end

      # `self.x...`: as a call of x on self.
      def self_chain(ops, line)
        return scope(ops, line, 'self') if @mode == :function3
        m, args = ops.first
        return false unless m
        self_call_chain([:pcq_self_call, m, args || []], ops[1..], line)
      end

      def self_call_chain(base, ops, line)
        name = base[1]
        args = base[2]
        if REFLECTION.include?(name)
          widen("#{name}()", line)
        elsif name == 'scope' && (args.nil? || args.empty?)
          scope(ops, line, 'scope')
        elsif @mode == :erb && name == 'has_variable?'
          key = args && args.length == 1 ? literal(args[0]) : nil
          key ? variable(key, [], line) : widen('has_variable?() of a name computed at run time', line)
        elsif @mode == :function4 && name == 'closure_scope' && (args.nil? || args.empty?)
          scope(ops, line, name)
        elsif @mode == :function4 && name == 'call_function'
          scope_call_function(args, line)
        elsif @mode == :function3 && name.start_with?('function_')
          puppet_function(name.sub('function_', '').downcase, args && args[0] && array_items(args[0]), line)
        elsif @mode == :function3 && name == 'call_function'
          scope_call_function(args, line)
        elsif @mode == :function3 && RubyScan.scope_methods.include?(name) && !SCOPE_SAFE.include?(name)
          scope([[name, args]] + ops, line, 'self')
        else
          return false
        end
        true
      end

      def const_chain(name, ops, line)
        case name
        when 'Facter' then widen("Facter (#{ops.first ? "Facter.#{ops.first[0]}" : 'Facter'}: facts of the host that compiles)", line)
        when 'Facts' then widen('Puppet::Node::Facts (a node\'s facts from an indirection)', line)
        when 'Puppet'
          return false unless ops.first && ops.first[0] == 'lookup'
          widen('Puppet.lookup (the global scope)', line)
        else return false
        end
        true
      end

      # `@name` and what follows it.
      def ivar(name, ops, line)
        scope(ops, line, '@__scope__') if name == '__scope__'
        return true if name.start_with?('__') # the wrapper's own state
        if name == 'facts'
          facts(ops, line, '@facts')
        elsif !NOT_FACTS.include?(name)
          var([name] + keys_of(ops), line)
        end
        true
      end

      # A variable of the scope the template runs in: the caller's
      # parameter or local, or a fact when the caller binds no such name.
      def var(keys, line)
        @found << [@mode == :erb ? :var : :fact, keys, line]
      end

      # The facts hash (`shown`) and what follows it.
      def facts(ops, line, shown)
        keys = keys_of(ops)
        return fact(keys, line) unless keys.empty?
        return whole(:facts, @node, line, "#{shown} used as a whole") if ops.empty?
        widen("#{shown}.#{ops.first[0]}", line)
      end

      # Leading literal keys of `[]`, `dig` and `fetch` steps.
      def keys_of(ops)
        keys = []
        ops.each do |m, args|
          case m
          when '[]', 'fetch'
            k = args && !args.empty? ? literal(args[0]) : nil
            break unless k && (m == 'fetch' || args.length == 1)
            keys << k
          when 'dig'
            ks = (args || []).map { |a| literal(a) }
            keys.concat(ks.take_while { |k| k })
            break
          else break
          end
        end
        keys
      end

      # The scope object and what is done with it: a variable by literal
      # name, a function by literal name; anything else widens.
      def scope(ops, line, shown)
        m, args = ops.first
        # a scope reached again through what the scope hands out
        # (`scope.resource.scope`, `compiler.topscope`)
        later = ops[1..].to_a.find { |o, _| REACH_SCOPE.include?(o) }
        return widen("#{shown}.#{m}...#{later[0]}", line) if later
        case m
        when nil then whole(:scope, @node, line, "#{shown} passed on whole")
        when 'send', 'public_send', '__send__'
          name = args && !args.empty? ? literal(args[0]) : nil
          return widen("#{shown}.#{m} of a method computed at run time", line) unless name
          scope([[name, args[1..]]] + ops[1..], line, shown)
        when '[]', 'lookupvar', 'include?', 'exist?', 'bound?'
          name = args && args.length >= 1 ? literal(args[0]) : nil
          return widen("#{shown}.#{m} of a name computed at run time", line) unless name
          variable(name, ops[1..], line)
        when 'call_function' then scope_call_function(args, line)
        when 'find_global_scope' then scope(ops[1..], line, "#{shown}.find_global_scope")
        when /\Afunction_(.+)\z/
          puppet_function(Regexp.last_match(1).downcase, args && args[0] && array_items(args[0]), line)
        else
          return if SCOPE_SAFE.include?(m)
          widen("#{shown}.#{m}", line)
        end
      end

      def scope_call_function(args, line)
        name = args && !args.empty? ? literal(args[0]) : nil
        return opens('call_function() of a name computed at run time', line) unless name
        # Scope#call_function takes an array, a 4.x function's call_function
        # the arguments themselves
        rest = args[1..]
        rest = array_items(rest[0]) if rest.length == 1 && array_items(rest[0])
        puppet_function(name.downcase.sub(/\A::/, ''), rest, line)
      end

      # The elements of an array literal (a 3.x function's arguments), or nil.
      def array_items(n)
        return nil unless n.is_a?(Array) && n[0] == :array
        n[1].nil? ? [] : args_of(n[1])
      end

      # A Puppet function called from Ruby, with its argument nodes (nil:
      # not known). The ones that read variables or render templates are
      # resolved as in Puppet code, or widen.
      def puppet_function(name, args, line)
        first = args && args[0] ? literal(args[0]) : nil
        case name
        when 'template', 'epp'
          names = (name == 'epp' ? (args || [])[0, 1] : args || []).map { |a| literal(a) }
          if args.nil? || names.empty? || names.any?(&:nil?)
            @found << [:"any_#{name == 'epp' ? 'epp' : 'template'}", "#{name}() of a name computed at run time (from Ruby)", line]
          else
            names.each { |t| @found << [:template, t, line] }
          end
        when 'getvar', 'fact'
          return opens("#{name}() of a name computed at run time", line) unless first
          parts = PcqAnalyze.keys(first.sub(/\A::/, ''))
          if name == 'fact' then fact(parts, line)
          elsif parts[0] == 'facts' then parts.length > 1 ? fact(parts[1..], line) : widen("getvar('facts')", line)
          elsif !parts[0].include?('::') && !NOT_FACTS.include?(parts[0]) then fact(parts, line)
          end
        when 'inline_template', 'inline_epp', 'call' then opens("#{name}() from Ruby", line)
        else @found << [:function, name, line]
        end
      end

      # A variable read by name (`os`, `::os`, `facts`), then keys.
      def variable(name, ops, line)
        bare = name.sub(/\A::/, '')
        return if bare.include?('::') # a class's variable: its class is in the catalog
        keys = keys_of(ops)
        if bare == 'facts'
          facts(ops, line, "the facts hash (#{name})")
        elsif NOT_FACTS.include?(bare)
          nil
        elsif name.start_with?('::')
          fact([bare] + keys, line)
        else
          var([bare] + keys, line)
        end
      end

      def fact(keys, line)
        @found << [:fact, keys, line]
      end

      def widen(cause, line)
        @found << [:widen, cause, line]
      end

      def opens(cause, line)
        @found << [:opens, cause, line]
      end
    end
  end

  # --- Hiera ---------------------------------------------------------------------

  # What Hiera's interpolations read.
  module Hiera
    # One `%{...}`: [:fact, keys] | [:function, name] | [:widen, cause] | nil.
    def self.interpolation(expr)
      # the raw text of a double-quoted YAML string escapes its quotes
      e = expr.gsub(/\\(["'])/, '\\1').strip
      return nil if e.empty? # %{} is the empty string
      call = e.match(/\A(\w+)\s*\((.*)\)\z/m)
      return variable(e) unless call
      arg = call[2].strip[/\A(["'])(.*)\1\z/m, 2]
      case call[1]
      when 'literal' then nil
      when 'scope' then arg ? variable(arg) : [:widen, 'scope() of a name computed at run time']
      when 'lookup', 'hiera', 'alias', 'strict_alias'
        # another key: its own interpolations are in the layers read
        arg ? [:function, 'lookup'] : [:widen, "#{call[1]}() of a key computed at run time"]
      else [:widen, 'an interpolation function pcq does not know']
      end
    end

    # A variable with an optional dotted key path (`facts.os."family"`).
    def self.variable(e)
      parts = PcqAnalyze.keys(e)
      first = parts.shift.to_s.sub(/\A::/, '')
      return [:widen, 'not a variable name'] unless first.match?(/\A[a-z_][\w:]*\z/i)
      return parts.empty? ? [:widen, 'the facts hash whole'] : [:fact, parts] if first == 'facts'
      # a class's variable: its class is in the catalog; or not a fact
      return nil if first.include?('::') || NOT_FACTS.include?(first)
      [:fact, [first] + parts]
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
        if any_of?(o, [M::IfExpression, M::UnlessExpression, M::CaseExpression])
          # a name every branch assigns is local after the branching
          scope = scope_of(path)
          definite(o).each { |n| @assigned[scope] << [n, end_of(o)] } unless conditional?(path, scope)
          next
        end
        next unless o.is_a?(M::AssignmentExpression) && o.left_expr.is_a?(M::VariableExpression)
        name = literal(o.left_expr.expr)
        next unless name
        scope = scope_of(path)
        # a name assigned only on some paths (`if`, `case`, `unless`, a
        # selector, `and`/`or`) is not local on the others: a read of it may
        # reach top scope, a fact
        # local from the end of the assignment on: `$x = "${x}-a"` reads the
        # outer `$x` first
        @assigned[scope] << [name, end_of(o)] unless conditional?(path, scope)
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
      @result.fact(t, path_parts, @file, line(o))
    end

    def widen(t, cause, o)
      @result.widen(t, cause, @file, line(o))
    end

    def opens(t, cause, o)
      @result.opens(t, cause, @file, line(o))
    end

    def literal(o)
      case o
      when M::LiteralString then o.value
      when M::HeredocExpression then literal(o.text_expr)
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
      return true if params_in_scope(path).include?(name)
      @assigned.fetch(scope_of(path), []).any? { |(n, off)| n == name && off < (use.offset || 0) }
    end

    # Parameters bound at `path`: of the enclosing lambdas and definition;
    # inside a parameter's default value, only the parameters before it
    # (Puppet sets them in order).
    def params_in_scope(path)
      names = []
      path.each_with_index.reverse_each do |c, i|
        if c.respond_to?(:parameters)
          params = Array(c.parameters)
          inside = params.index { |p| p.equal?(path[i + 1]) }
          names.concat((inside ? params.first(inside) : params).map(&:name))
        end
        break if any_of?(c, DEFINITIONS)
      end
      names
    end

    # Where `o` ends in its file: the furthest end of it and its contents
    # (an assignment's own position is its `=`).
    def end_of(o)
      ends = ->(x) { x.respond_to?(:offset) && x.offset ? x.offset + x.length.to_i : 0 }
      furthest = ends.call(o)
      o._pcore_all_contents([]) { |d| furthest = [furthest, ends.call(d)].max }
      furthest
    end

    # Names bound where `use` runs: the parameters of the enclosing
    # definition and lambdas, and what is assigned (on every path) before
    # it in each enclosing scope. Sorted.
    def bound_names(use, path)
      names = []
      at = use.offset || 0
      names.concat(params_in_scope(path))
      path.reverse_each do |c|
        @assigned.fetch(c, []).each { |(n, off)| names << n if off < at } if any_of?(c, SCOPES)
        break if any_of?(c, DEFINITIONS)
      end
      names.uniq.sort
    end

    # A string that starts with literal text other than `$`: the name of a
    # class, type or resource (`"apache::mod::${m}"`), not of a variable.
    def names_a_type?(o)
      return false unless o.is_a?(M::ConcatenatedString)
      first = o.segments.first
      first.is_a?(M::LiteralString) && !first.value.empty? && !first.value.start_with?('$')
    end

    BRANCHES = [M::IfExpression, M::UnlessExpression, M::CaseExpression, M::SelectorExpression,
                M::AndExpression, M::OrExpression].freeze

    # Names `e` assigns on every path through it: both branches of an
    # `if`/`unless` with an `else`, every option of a `case` with a
    # `default`.
    def definite(e)
      case e
      when M::BlockExpression then e.statements.flat_map { |x| definite(x) }.uniq
      when M::AssignmentExpression
        name = e.left_expr.is_a?(M::VariableExpression) ? literal(e.left_expr.expr) : nil
        name ? [name] : []
      when M::IfExpression, M::UnlessExpression
        e.else_expr ? definite(e.then_expr) & definite(e.else_expr) : []
      when M::CaseExpression
        default = e.options.any? { |c| c.values.any? { |v| v.is_a?(M::LiteralDefault) } }
        default ? e.options.map { |c| definite(c.then_expr) }.reduce(:&) || [] : []
      else []
      end
    end

    # Whether the code at `path` runs only on some paths through `scope`.
    def conditional?(path, scope)
      path.reverse_each do |c|
        return false if c.equal?(scope)
        return true if any_of?(c, BRANCHES)
      end
      false
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
        Array(o.parameters).each do |p|
          @result.class_vars["#{name}::#{p.name}"] << nil
          @result.params["#{name}::#{p.name}"] = true
        end
      when M::ResourceTypeDefinition then @result.unit('defines', Walker.unit_name(o))
      when M::FunctionDefinition then @result.unit('functions', Walker.unit_name(o))
      when M::VariableExpression then variable(o, path)
      when M::CallNamedFunctionExpression, M::CallMethodExpression then call(o, path)
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

    # A function call, `f(x, y)` or `x.f(y)` (Puppet's method-call form:
    # the receiver is the first argument), or `call('f', x, y)`.
    def call(o, path)
      if o.is_a?(M::CallMethodExpression)
        functor = o.functor_expr
        return unless functor.is_a?(M::NamedAccessExpression)
        fname = literal(functor.right_expr)
        args = [functor.left_expr] + Array(o.arguments)
      else
        fname = literal(o.functor_expr)
        args = Array(o.arguments)
      end
      return unless fname # a type's constructor: `Integer($x)`
      function(fname.downcase.sub(/\A::/, ''), args, target(path), o, path)
    end

    def function(fname, args, t, o, path)
      case fname
      when 'call'
        name = args[0] && literal(args[0])
        return opens(t, 'call() of a function computed at run time', o) unless name
        function(name.downcase.sub(/\A::/, ''), args[1..], t, o, path)
      when 'template', 'epp'
        # an ERB template's variables are the caller's: the names bound here
        t['bound'] << bound_names(o, path) if fname == 'template'
        template_call(fname, args, t, o, path)
      when 'inline_template' then inline_template(args, t, o, path)
      when 'inline_epp' then inline_epp(args, t, o)
      when 'getvar'
        name = args[0] && literal(args[0])
        return widen(t, 'getvar() of a name computed at run time', o) unless name
        parts = PcqAnalyze.keys(name.sub(/\A::/, ''))
        if parts[0] == 'facts'
          parts.length > 1 ? fact(t, parts[1..], o) : widen(t, "getvar('#{name}'): the facts hash whole", o)
        elsif !parts[0].to_s.include?('::') && !NOT_FACTS.include?(parts[0])
          fact(t, parts, o)
        end
      when 'fact'
        name = args[0] && literal(args[0])
        name ? fact(t, PcqAnalyze.keys(name), o) : widen(t, 'fact() of a name computed at run time', o)
      when 'defined'
        # defined('$x') asks whether a variable is set; a type, class or
        # resource reads none, but its answer moves when one is added or
        # removed (deploys)
        t['functions'] << 'defined'
        args.each do |a|
          name = literal(a)
          if name&.start_with?('$')
            var = name[1..].sub(/\A::/, '')
            fact(t, [var], o) unless var.include?('::') || NOT_FACTS.include?(var)
          elsif name.nil? && !any_of?(a, [M::QualifiedReference, M::AccessExpression]) && !names_a_type?(a)
            widen(t, 'defined() of a name computed at run time', o)
          end
        end
      else
        t['functions'] << fname
      end
    end

    # inline_epp(text, params): a literal text is walked as an EPP template
    # in the caller's unit; any other text widens.
    def inline_epp(args, t, o)
      text = args[0] && literal(args[0])
      return opens(t, 'inline_epp() of text computed at run time', o) unless text
      program = Puppet::Pops::Parser::EvaluatingParser::EvaluatingEppParser.new.parse_string(text, @file)
      Walker.new(@result, @file, program, t, @module).walk
    rescue StandardError, SyntaxError => e
      opens(t, "inline_epp() the parser refused: #{e.message.lines.first.to_s.strip}", o)
    end

    # template(name...) or epp(name, params)
    def template_call(fname, args, t, o, path)
      names = fname == 'epp' ? args.first(1) : args
      names.each do |a|
        name = literal(a)
        prefix = name ? nil : literal_prefix(a)
        epp = fname == 'epp'
        cause = "#{fname}() of a name computed at run time (#{@file}:#{line(o)})"
        if name
          # epp() adds the extension when the name has none
          name += '.epp' if epp && !name.end_with?('.epp')
          t['templates'] << name
        elsif prefix
          # one of the templates under a known directory
          t['template_prefixes'] << prefix
        elsif (param = own_parameter(a, path))
          # a defined type's parameter: its value is in each node's catalog
          t['template_params'] << { 'param' => param, 'epp' => epp }
        elsif (var = class_variable(a, path))
          # resolved once every class's assignments are known
          @result.pending_templates << [t, var, epp, cause]
        else
          # the template is one of the environment's, which one is known
          # only at run time: count every template's reads
          t[epp ? 'any_epp' : 'any_template'] = cause
        end
      end
    end

    # `$x` naming a parameter of the enclosing defined type (not assigned
    # before; a class's parameters are class variables): "define::x".
    def own_parameter(o, path)
      return nil unless o.is_a?(M::VariableExpression)
      name = literal(o.expr)
      definition = path.reverse_each.find { |c| any_of?(c, DEFINITIONS) }
      return nil unless name && definition.is_a?(M::ResourceTypeDefinition)
      return nil unless params_in_scope(path).include?(name)
      return nil if @assigned.fetch(scope_of(path), []).any? { |(n, _)| n == name }
      "#{Walker.unit_name(definition)}::#{name}"
    end

    def inline_template(args, t, o, path)
      args.each do |a|
        text = literal(a)
        next erb_scan(text, t, o, bound_names(o, path)) if text
        parts = a.is_a?(M::ConcatenatedString) ? a.segments : [a]
        parts.each do |part|
          part = part.expr if part.is_a?(M::TextExpression)
          if part.is_a?(M::LiteralString)
            erb_scan(part.value, t, o, bound_names(o, path))
          elsif (var = class_variable(part, path))
            # resolved at the end, once every class's assignments are known
            @result.pending_erb << [t, var, @file, line(o)]
          else
            opens(t, 'inline_template() of text computed at run time', o)
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
        known = segment(s) # literal text, `${module_name}`
        s = s.expr if s.is_a?(M::TextExpression)
        if known
          [:text, known]
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

    def erb_scan(text, t, o, bound = nil)
      @result.erb(t, text, @file, line(o), bound)
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
      type = type.sub(/\A::/, '') # `::Foo <<| |>>` collects Foo
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
    M = Puppet::Pops::Model
    def initialize(result)
      @result = result
    end

    def parse_pp(file, target, module_name)
      @result.count_file
      # Puppet's parser without the evaluating parser's validation pass (a
      # third of the time): the analysis reads the model, it does not judge it.
      program = Puppet::Pops::Parser::Parser.new.parse_file(file).model
      provides(file, program, module_name)
      Walker.new(@result, file, program, target, module_name).walk
    rescue StandardError, SyntaxError => e
      @result.provide(file, 'unparsable')
      @result.unparsable(target, file, e)
    end

    # What a manifest defines; code outside definitions (and the site
    # manifests, node definitions) is `global`.
    def provides(file, program, module_name)
      return @result.provide(file, 'global') if module_name.nil?
      program.definitions.each { |d| @result.provide(file, Scanner.definition_label(d)) }
      body = program.body
      statements = body.is_a?(M::BlockExpression) ? body.statements : [body]
      loose = statements.any? { |s| !s.nil? && !s.is_a?(M::Definition) && !s.is_a?(M::Nop) }
      @result.provide(file, 'global') if loose
      # comments only: nothing to load
      @result.provide(file, 'inert') if program.definitions.empty? && !loose
    end

    def self.definition_label(d)
      case d
      when M::HostClassDefinition then "class:#{Walker.unit_name(d)}"
      when M::ResourceTypeDefinition then "define:#{Walker.unit_name(d)}"
      when M::FunctionDefinition then "function:#{Walker.unit_name(d)}"
      when M::NodeDefinition then 'global'
      else "alias:#{d.respond_to?(:name) ? d.name.to_s.downcase : d.class.name}"
      end
    end

    def parse_template(file, module_name, templates_dir)
      @result.count_file
      name = template_name(file, module_name, templates_dir)
      @result.provide(file, "template:#{name}")
      t = @result.unit('templates', name)
      if file.end_with?('.epp')
        begin
          program = Puppet::Pops::Parser::EvaluatingParser::EvaluatingEppParser.new.parse_file(file)
          Walker.new(@result, file, program, t, module_name).walk
        rescue StandardError, SyntaxError => e
          @result.unparsable(t, file, e)
        end
      else
        @result.erb(t, File.read(file, encoding: 'UTF-8', invalid: :replace), file, nil, :caller)
      end
    end

    # A Ruby function: what its code reads through the scope (3.x functions
    # run with the scope as self; 4.x ones reach it through closure_scope).
    def scan_ruby_function(file)
      @result.count_file
      text = File.read(file, encoding: 'UTF-8', invalid: :replace)
      name = text[/newfunction\(\s*:['"]?([a-z0-9_:]+)/, 1] || text[/create_function\(\s*:?['"]?([a-z0-9_:]+)/, 1] ||
             File.basename(file, '.rb')
      mode = file.include?('/parser/functions/') ? :function3 : :function4
      by_path = file.sub(%r{.*/lib/puppet/(parser/)?functions/}, '').delete_suffix('.rb').gsub('/', '::')
      if text =~ /newfunction|create_function/
        [name, by_path].each { |n| @result.provide(file, "function:#{n.downcase}") }
      else
        @result.provide(file, 'lib') # a helper other functions load
      end
      @result.ruby_reads(@result.unit('functions', name.downcase), RubyScan.code(text, mode), file)
    end

    # A Hiera layer: its hiera.yaml, and the data under each datadir it names
    # (`data` when it names none). `target` is the unit whose nodes read
    # them: every node for the global and environment layers, the module's
    # classes for a module's layer.
    def scan_hiera(config, target, label)
      base = File.dirname(config)
      dirs = ['data']
      return scan_hiera_dirs(base, dirs, target, label) unless File.file?(config)
      scan_hiera_file(config, target, label)
      begin
        # Hiera 3 files have symbol keys (`:yaml:`)
        doc = YAML.safe_load(File.read(config), permitted_classes: [Symbol], aliases: true) || {}
        doc = {} unless doc.is_a?(Hash)
        # a level without its own datadir uses the default one (`data`,
        # or `defaults`' / Hiera 4's top-level `datadir`)
        default = (doc['defaults'].is_a?(Hash) && doc['defaults']['datadir']) || doc['datadir'] || 'data'
        dirs = [default]
        levels = Array(doc['hierarchy']).select { |h| h.is_a?(Hash) }
        levels.each { |h| dirs << (h['datadir'] || default) }
        ([doc['defaults']] + levels).each { |h| hiera_level(h, target, config) if h.is_a?(Hash) }
        # Hiera 3: each backend's datadir; a backend other than the files'
        # gets the scope
        %i[yaml json eyaml].each do |b|
          v3 = doc[b] || doc[":#{b}"] || doc[b.to_s]
          dirs << (v3[:datadir] || v3[':datadir'] || v3['datadir']) if v3.is_a?(Hash)
        end
        Array(doc[:backends] || doc[':backends'] || doc['backends']).each do |b|
          next if %w[yaml json eyaml].include?(b.to_s)
          @result.opens(target, "Hiera 3 backend #{b}, code pcq does not read", config, 0)
        end
        dirs = dirs.compact.map(&:to_s)
      rescue StandardError => e
        @result.opens(target, "unreadable hiera.yaml: #{e.message.lines.first.to_s.strip}", config, 0)
      end
      scan_hiera_dirs(base, dirs, target, label)
    end

    # Backends Puppet ships (and eyaml's): they read only the files.
    HIERA_BACKENDS = %w[yaml_data json_data hocon_data eyaml_lookup_key].freeze

    # What a hierarchy level reads besides its `%{}` interpolations: the
    # variable `mapped_paths` names, and its backend function.
    def hiera_level(level, target, config)
      mapped = level['mapped_paths']
      if mapped.is_a?(Array) && mapped[0].is_a?(String)
        read = Hiera.variable(mapped[0])
        hiera_read(target, read, "mapped_paths #{mapped[0]}", config, 0)
      end
      if level['hiera3_backend']
        @result.opens(target, "Hiera 3 backend #{level['hiera3_backend']}, code pcq does not read", config, 0)
      end
      %w[data_hash lookup_key data_dig].each do |k|
        fn = level[k]
        next unless fn.is_a?(String) && !HIERA_BACKENDS.include?(fn)
        # a module's backend: its code is scanned, and a deploy changing it
        # moves the nodes reading the layer
        target['functions'] << fn.downcase
        next if fn.include?('::')
        # (a backend without a namespace may read the scope in ways the
        # analysis of its code does not bound)
        @result.widen(target, "Hiera backend #{k}: #{fn}, code pcq does not read", config, 0)
      end
    end

    def hiera_read(target, read, shown, file, line)
      case read&.first
      when :fact then @result.fact(target, read[1], file, line)
      when :function then target['functions'] << read[1]
      when :widen then @result.widen(target, "Hiera #{shown}: #{read[1]}", file, line)
      end
    end

    def scan_module(dir, dir_name)
      name = dir_name.sub(/\A[^-]+-/, '') # "saz-rsyslog" holds module rsyslog
      Dir.glob(File.join(dir, '{manifests,functions,types,plans}', '**', '*.pp')).sort.each do |f|
        parse_pp(f, @result.global, name)
      end
      # every file: template() takes any name (`.epp` files are EPP)
      templates = File.join(dir, 'templates')
      Dir.glob(File.join(templates, '**', '*')).sort.each do |f|
        parse_template(f, name, templates) if File.file?(f)
      end
      scan_functions(dir)
      # resource types (a deploy changing one moves the catalogs using it)
      Dir.glob(File.join(dir, 'lib', 'puppet', 'type', '*.rb')).sort.each do |f|
        @result.provide(f, "type:#{File.basename(f, '.rb').downcase}")
      end
      layer = @result.unit('module_hiera', name)
      scan_hiera(File.join(dir, 'hiera.yaml'), layer, "module_hiera:#{name}")
      # a module's data from its `data` function (metadata.json's
      # data_provider)
      data_function(dir, name, layer)
    end

    # Ruby functions under a module's (or the environment's) lib.
    def scan_functions(dir)
      Dir.glob(File.join(dir, 'lib', 'puppet', '{functions,parser/functions}', '**', '*.rb')).sort.each do |f|
        scan_ruby_function(f)
      end
    end

    def data_function(dir, name, layer)
      meta = File.join(dir, 'metadata.json')
      # metadata.json: the module's data provider, and what
      # load_module_metadata() reads
      if File.file?(meta)
        @result.provide(meta, "module_hiera:#{name}")
        @result.provide(meta, "files:#{name}")
      end
      provider = File.file?(meta) ? (JSON.parse(File.read(meta))['data_provider'] rescue nil) : nil
      layer['functions'] << "#{name}::data" if provider == 'function'
    end

    private

    # `module/path` of a file under the module's templates directory (a
    # module directory may itself sit under a `templates` directory).
    def template_name(file, module_name, templates_dir)
      "#{module_name}/#{file.delete_prefix(templates_dir + '/')}"
    end

    # Interpolations in a hierarchy (hiera.yaml) or a data file.
    # YAML and JSON are read as YAML, so that the strings are the ones Hiera
    # sees (quotes and escapes undone); HOCON, or YAML that does not parse,
    # line by line.
    def scan_hiera_file(file, target, label)
      @result.count_file
      @result.provide(file, label)
      text = File.read(file, encoding: 'UTF-8', invalid: :replace)
      strings = yaml_strings(text) unless file.end_with?('.conf')
      strings ||= text.each_line.with_index(1).map { |l, n| [l, n] }
      strings.each do |value, n|
        value.scan(/%\{([^}]*)\}/) do |(expr)|
          hiera_read(target, Hiera.interpolation(expr), "%{#{expr}}", file, n)
        end
      end
    end

    # [[string, line]] of every scalar (keys too) in a YAML text, or nil.
    def yaml_strings(text)
      out = []
      walk = lambda do |node|
        out << [node.value, node.start_line + 1] if node.is_a?(Psych::Nodes::Scalar) && node.value.include?('%{')
        node.children&.each { |c| walk.call(c) }
      end
      walk.call(Psych.parse_stream(text))
      out
    rescue Psych::Exception, StandardError
      nil
    end

    def scan_hiera_dirs(base, dirs, target, label)
      dirs.uniq.each do |d|
        # a datadir chosen per node (`%{...}`): scan from its fixed start
        d = d.split('%{').first.to_s
        dir = File.expand_path(d, base)
        Dir.glob(File.join(dir, '**', '*.{yaml,yml,json,eyaml,conf}')).sort.each { |f| scan_hiera_file(f, target, label) }
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
          # Puppet's own rule (Puppet::Module.is_module_directory_name?)
          next if seen[m] || !File.directory?(File.join(d, m)) || m !~ /\A[a-z][a-z0-9_]*\z/
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
      path = setting(env_dir, 'modulepath')
      return [File.join(env_dir, 'modules')] + base unless path
      path.split(':').flat_map do |d|
        d == '$basemodulepath' ? base : [File.expand_path(d, env_dir)]
      end
    end

    # The site manifests: environment.conf's `manifest` (a file or a
    # directory, relative to the environment) or `manifests`, as Puppet
    # reads them.
    def self.manifests(env_dir)
      path = File.expand_path(setting(env_dir, 'manifest') || 'manifests', env_dir)
      return [path] if File.file?(path)
      Dir.glob(File.join(path, '**', '*.pp')).sort
    end

    # A setting of environment.conf, unquoted, or nil.
    def self.setting(env_dir, key)
      conf = File.join(env_dir, 'environment.conf')
      return nil unless File.file?(conf)
      line = File.readlines(conf).find { |l| l =~ /\A\s*#{key}\s*=/ }
      line&.split('=', 2)&.last&.strip&.delete('"\'')
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
      # the environment's own functions (`environment::name`)
      Dir.glob(File.join(env_dir, 'functions', '**', '*.pp')).sort.each do |f|
        scanner.parse_pp(f, result.global, 'environment')
      end
      scanner.scan_functions(env_dir)
      global_hiera.each { |f| scanner.scan_hiera(f, result.global, 'global') }
      scanner.scan_hiera(File.join(env_dir, 'hiera.yaml'), result.global, 'global')
      Modules.scan(result, mods)
      result.resolve_pending_erb
      result.resolve_pending_templates

      result.out['modules'] = mods.map { |_, n| n }
      result.out['module_dirs'] = mods
      result.out['modulepath'] = Environment.modulepath(env_dir, module_dirs)
      result.out['builtins'] = Main.builtin_functions
      result.out['builtin_types'] = Main.builtin_types
      result.out['seconds'] = (Time.now - started).round(3)
      puts JSON.generate(result.out)
    end

    # The functions Puppet itself (and the gems on Ruby's load path) ship:
    # a call to any other function the analysis has not read widens.
    def self.builtin_functions
      $LOAD_PATH.flat_map do |d|
        Dir.glob(File.join(d, 'puppet', '{functions,parser/functions}', '**', '*.rb')).map do |f|
          f.sub(%r{.*/puppet/(parser/)?functions/}, '').delete_suffix('.rb').gsub('/', '::')
        end
      end.uniq.sort
    end

    # The resource types Puppet itself (and the gems on Ruby's load path)
    # ship.
    def self.builtin_types
      $LOAD_PATH.flat_map do |d|
        Dir.glob(File.join(d, 'puppet', 'type', '*.rb')).map { |f| File.basename(f, '.rb').downcase }
      end.uniq.sort
    end

    # Puppet's settings, pointed at a directory of our own, removed at exit.
    def self.init_puppet
      dir = Dir.mktmpdir('pcq-analyze')
      main = Process.pid
      at_exit { FileUtils.rm_rf(dir) if Process.pid == main }
      Puppet.initialize_settings(['--confdir', File.join(dir, 'conf'), '--vardir', File.join(dir, 'var')])
    rescue StandardError
      # already initialized, or not needed for parsing
    end
  end
end

PcqAnalyze::Main.run(ARGV)
