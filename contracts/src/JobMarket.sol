// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {Ownable2Step} from "@openzeppelin/contracts/access/Ownable2Step.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";

/// @title JobMarket
/// @notice Escrowed deals between a job creator and a resource provider, matched by a solver.
///
/// Gas design: a deal is stored as ONE slot (state, deadline, a tag of the result CID) keyed by
/// `dealId = keccak256(abi.encode(deal))`; every later call passes the `Deal` back in calldata and
/// the contract re-hashes it, so tampered terms simply name an unknown deal. Offer nonces are
/// bitmaps (256 offers per storage word). Settled deals are deleted (gas refund). Balances are
/// deposited once and reused by every deal.
///
/// Lifecycle (`state` of a deal):
///   createDeal           -> Created     (deadline: result due)
///   submitResult         -> Submitted   (deadline: end of the challenge window)
///   acceptResult         -> settled     provider gets price + collateral
///   claimPayment / timeoutJudgement (after the window) -> settled, provider gets price + collateral
///   challengeResult      -> Challenged  (job creator pays the mediation fee; deadline: mediation)
///   resolveMediation     -> Upheld      provider gets price + collateral, mediator gets the fee
///                        -> Refunded    job creator gets price + collateral, mediator gets the fee
///   timeoutResult        -> Refunded    job creator gets price + the provider's collateral
///   timeoutMediation     -> MediationExpired  job creator gets price + fee back, provider its collateral
/// Every token held in escrow leaves by exactly one of these paths. The common endings (accept,
/// claim) delete the deal's slot; the rare ones keep a final state (and the result tag), so a
/// contract job creator such as JobCreator can tell how its deal ended and what came back.
///
/// Trust rules the contract enforces (not only the solver):
///   - a resource offer commits to `minTimeout`, the least time its provider needs for a result:
///     no deal gives a provider less, so no job creator can make a deal that an honest provider
///     cannot fulfil and then take its collateral by `timeoutResult`;
///   - collateral is at least `minCollateral` and at least `collateralMultiple` x price, so that
///     a cheat caught with probability p costs more than it earns whenever p x multiple >= 1;
///   - offers name at most MAX_MEDIATORS mediators (matching compares the two lists).
/// The token must be a plain ERC-20 (no fee on transfer, no rebasing): balances count what was
/// asked to move. Token calls happen only in deposit/withdraw, which are guarded against reentry.
contract JobMarket is EIP712, Ownable2Step, ReentrancyGuardTransient {
    using SafeERC20 for IERC20;

    /// @notice Deployment version; a new version is a new deployment (no upgradeability).
    string public constant VERSION = "1.0.0";

    /// @notice What a job creator signs: which module and spec to run, on what machine, for at most what.
    struct JobOffer {
        address jobCreator;
        bytes32 module; // keccak256 of the module reference, e.g. "sdxl:v0.9-lilypad1"
        bytes32 specHash; // sha256 digest of the rendered job spec (JobSpec.spec_hash)
        uint256 machine; // minimum machine: eight 32-bit lanes, see lilypad.chain.offers.Machine
        uint96 maxPrice;
        uint32 timeout; // seconds the provider has to submit a result once the deal exists
        address[] mediators; // mediators the job creator trusts, in order of preference
        uint64 expiry; // unix time after which the offer cannot make a deal
        uint256 nonce; // any number; each (jobCreator, nonce) makes at most one deal
    }

    /// @notice What a resource provider signs: its machine, price, collateral and trusted mediators.
    struct ResourceOffer {
        address provider;
        bytes32 module; // 0 = any module
        uint256 machine; // offered machine, same lanes as JobOffer.machine
        uint96 price;
        uint96 collateral;
        uint32 minTimeout; // the least `timeout` a job offer must give: this provider's delivery time
        address[] mediators;
        uint64 expiry;
        uint256 nonce;
    }

    /// @notice The settlement terms of a deal; its keccak256 is the deal id.
    struct Deal {
        address jobCreator;
        address provider;
        address mediator;
        uint96 price;
        uint96 collateral;
        uint96 mediationFee;
        bytes32 jobOfferHash; // EIP-712 struct hash of the JobOffer (commits to module and spec)
        bytes32 resourceOfferHash;
    }

    /// @notice One deal to create in a batch.
    struct DealRequest {
        JobOffer jobOffer;
        bytes jobCreatorSig;
        ResourceOffer resourceOffer;
        bytes providerSig;
    }

    enum State {
        None, // unknown, or settled by accept / claim / judgement timeout (the slot is deleted)
        Created,
        Submitted,
        Challenged,
        Upheld, // final: the mediator ruled for the provider (tag: the provider's result)
        Refunded, // final: the job creator got price + collateral (tag: the mediator's result, if any)
        MediationExpired // final: no ruling in time; job creator got price + fee, provider its collateral
    }

    enum Timeout {
        Result,
        Judgement,
        Mediation
    }

    /// @dev Packed into one storage slot.
    struct DealState {
        State state;
        uint48 deadline;
        bytes24 resultTag; // first 24 bytes of keccak256(resultCid)
    }

    /// @dev One slot per account: its free balance and its current 128-nonce bitmap word, so a
    ///      deal's debit and nonce use cost one storage write per party.
    struct Account {
        uint104 balance;
        uint24 nonceWord;
        uint128 nonceBits;
    }

    struct MediatorInfo {
        bool active;
        uint96 fee;
    }

    bytes32 public constant JOB_OFFER_TYPEHASH = keccak256(
        "JobOffer(address jobCreator,bytes32 module,bytes32 specHash,uint256 machine,uint96 maxPrice,"
        "uint32 timeout,address[] mediators,uint64 expiry,uint256 nonce)"
    );
    bytes32 public constant RESOURCE_OFFER_TYPEHASH = keccak256(
        "ResourceOffer(address provider,bytes32 module,uint256 machine,uint96 price,uint96 collateral,"
        "uint32 minTimeout,address[] mediators,uint64 expiry,uint256 nonce)"
    );
    uint256 public constant MAX_CID_LENGTH = 128;
    uint256 public constant MAX_MEDIATORS = 16;
    /// @dev Passed for debits that use no nonce; it can never be an offer's nonce.
    uint256 private constant NO_NONCE = type(uint256).max;

    IERC20 public immutable token;
    uint32 public immutable challengeWindow;
    uint32 public immutable mediationTimeout;
    /// @notice The least collateral of any deal, whatever its price (no deal is unbacked).
    uint96 public immutable minCollateral;
    /// @notice A deal's collateral is at least this many times its price.
    uint32 public immutable collateralMultiple;

    mapping(address account => Account) private _accounts;
    /// @dev 128-bit nonce words that are no longer an account's current word, by `nonce >> 7`.
    mapping(address account => mapping(uint256 word => uint256)) private _olderNonces;
    mapping(address => bool) public isSolver;
    mapping(address => MediatorInfo) public mediators;
    mapping(bytes32 dealId => DealState) private _deals;

    event Deposited(address indexed account, address indexed from, uint256 amount);
    event Withdrawn(address indexed account, uint256 amount);
    event SolverSet(address indexed solver, bool active);
    event MediatorSet(address indexed mediator, bool active, uint96 fee);
    event NonceInvalidated(address indexed signer, uint256 nonce);
    event DealCreated(
        bytes32 indexed dealId, address indexed jobCreator, address indexed provider, Deal deal, uint48 resultDeadline
    );
    event ResultSubmitted(bytes32 indexed dealId, bytes resultCid, uint48 challengeDeadline);
    event ResultAccepted(bytes32 indexed dealId);
    event PaymentClaimed(bytes32 indexed dealId);
    event ResultChallenged(bytes32 indexed dealId, address indexed mediator, uint48 mediationDeadline);
    /// @dev `resultCid` is the mediator's own result (the correct one when the provider loses).
    event MediationResolved(bytes32 indexed dealId, address indexed mediator, bool providerWins, bytes resultCid);
    event DealTimedOut(bytes32 indexed dealId, Timeout kind);

    error NotSolver(address caller);
    error NotParty(address caller, address expected);
    error UnknownDeal(bytes32 dealId);
    error WrongState(bytes32 dealId, State state);
    error DeadlinePassed(bytes32 dealId, uint256 deadline);
    error DeadlineNotReached(bytes32 dealId, uint256 deadline);
    error OfferExpired(address signer, uint256 nonce, uint256 expiry);
    error NonceUsed(address signer, uint256 nonce);
    error BadSignature(address signer);
    error InsufficientBalance(address account, uint256 balance, uint256 needed);
    error PriceAboveMaximum(uint256 price, uint256 maxPrice);
    error ModuleMismatch(bytes32 jobModule, bytes32 offerModule);
    error MachineMismatch(uint256 lane, uint256 needed, uint256 offered);
    error NoMutualMediator();
    error InvalidCid(uint256 length);
    error LengthMismatch(uint256 deals, uint256 cids);
    error ZeroAmount();
    error BalanceOverflow(address account, uint256 balance);
    error TimeoutTooShort(uint256 timeout, uint256 minTimeout);
    error CollateralTooLow(uint256 collateral, uint256 required);
    error TooManyMediators(uint256 count, uint256 max);

    constructor(
        address owner_,
        IERC20 token_,
        uint32 challengeWindow_,
        uint32 mediationTimeout_,
        uint96 minCollateral_,
        uint32 collateralMultiple_
    ) EIP712("LilypadJobMarket", "1") Ownable(owner_) {
        if (minCollateral_ == 0) revert ZeroAmount();
        token = token_;
        challengeWindow = challengeWindow_;
        mediationTimeout = mediationTimeout_;
        minCollateral = minCollateral_;
        collateralMultiple = collateralMultiple_;
    }

    // ------------------------------------------------------------------ registries (owner)

    function setSolver(address solver, bool active) external onlyOwner {
        isSolver[solver] = active;
        emit SolverSet(solver, active);
    }

    function setMediator(address mediator, bool active, uint96 fee) external onlyOwner {
        mediators[mediator] = MediatorInfo(active, fee);
        emit MediatorSet(mediator, active, fee);
    }

    // ------------------------------------------------------------------ balances

    /// @notice Move `amount` tokens from the caller into its market balance (approve first).
    function deposit(uint256 amount) external nonReentrant {
        _deposit(msg.sender, msg.sender, amount);
    }

    /// @notice Credit `account` with `amount` tokens taken from the caller.
    function depositFor(address account, uint256 amount) external nonReentrant {
        _deposit(account, msg.sender, amount);
    }

    /// @notice Deposit with an EIP-2612 permit instead of a prior approval.
    function depositWithPermit(uint256 amount, uint256 deadline, uint8 v, bytes32 r, bytes32 s)
        external
        nonReentrant
    {
        // NOTE: a front-run permit makes this call revert only if the allowance is missing too.
        try IERC20Permit(address(token)).permit(msg.sender, address(this), amount, deadline, v, r, s) {} catch {}
        _deposit(msg.sender, msg.sender, amount);
    }

    /// @notice Take `amount` of the caller's free balance back out of the market.
    function withdraw(uint256 amount) external nonReentrant {
        if (amount == 0) revert ZeroAmount();
        _useNonceAndDebit(msg.sender, NO_NONCE, amount);
        emit Withdrawn(msg.sender, amount);
        token.safeTransfer(msg.sender, amount);
    }

    /// @notice Revoke an unused offer: its nonce can no longer make a deal.
    function invalidateNonce(uint256 nonce) external {
        if (nonce == NO_NONCE) revert NonceUsed(msg.sender, nonce);
        _useNonceAndDebit(msg.sender, nonce, 0);
        emit NonceInvalidated(msg.sender, nonce);
    }

    // ------------------------------------------------------------------ deals

    /// @notice Create a deal from two signed offers (registered solvers only).
    function createDeal(
        JobOffer calldata jobOffer,
        bytes calldata jobCreatorSig,
        ResourceOffer calldata resourceOffer,
        bytes calldata providerSig
    ) external returns (bytes32 dealId) {
        _onlySolver();
        return _createDeal(jobOffer, jobCreatorSig, resourceOffer, providerSig);
    }

    /// @notice Create several deals in one transaction; any failure reverts the whole batch.
    function createDeals(DealRequest[] calldata requests) external returns (bytes32[] memory dealIds) {
        _onlySolver();
        dealIds = new bytes32[](requests.length);
        for (uint256 i; i < requests.length; ++i) {
            DealRequest calldata r = requests[i];
            dealIds[i] = _createDeal(r.jobOffer, r.jobCreatorSig, r.resourceOffer, r.providerSig);
        }
    }

    /// @notice The provider submits the CID of the job's outputs before the result deadline.
    function submitResult(Deal calldata deal, bytes calldata resultCid) external {
        _submitResult(deal, resultCid);
    }

    /// @notice Submit results of several deals at once.
    function submitResults(Deal[] calldata deals, bytes[] calldata resultCids) external {
        if (deals.length != resultCids.length) revert LengthMismatch(deals.length, resultCids.length);
        for (uint256 i; i < deals.length; ++i) {
            _submitResult(deals[i], resultCids[i]);
        }
    }

    /// @notice The job creator accepts the submitted result: the provider is paid at once.
    /// @dev No CID is passed: a deal holds at most one result, fixed by submitResult.
    function acceptResult(Deal calldata deal) external {
        (bytes32 id,) = _load(deal, State.Submitted);
        _onlyParty(deal.jobCreator);
        delete _deals[id];
        _credit(deal.provider, uint256(deal.price) + deal.collateral);
        emit ResultAccepted(id);
    }

    /// @notice The provider takes its payment once the challenge window has passed unchallenged.
    function claimPayment(Deal calldata deal) external {
        _onlyParty(deal.provider);
        emit PaymentClaimed(_payProviderAfterWindow(deal));
    }

    /// @notice Anyone may settle a result the job creator neither accepted nor challenged in time:
    ///         the provider is paid.
    function timeoutJudgement(Deal calldata deal) external {
        bytes32 id = _payProviderAfterWindow(deal);
        emit DealTimedOut(id, Timeout.Judgement);
    }

    /// @notice The job creator disputes the result within the challenge window, paying the fee of the
    ///         deal's mediator (a mediator both offers named).
    function challengeResult(Deal calldata deal) external {
        (bytes32 id, DealState memory s) = _load(deal, State.Submitted);
        _onlyParty(deal.jobCreator);
        if (block.timestamp > s.deadline) revert DeadlinePassed(id, s.deadline);
        _useNonceAndDebit(deal.jobCreator, NO_NONCE, deal.mediationFee);
        uint48 deadline = uint48(block.timestamp + mediationTimeout);
        _deals[id] = DealState(State.Challenged, deadline, s.resultTag);
        emit ResultChallenged(id, deal.mediator, deadline);
    }

    /// @notice The deal's mediator rules on a challenged result and takes its fee. `resultCid` is the
    ///         mediator's own result of the job (empty if it has none): when the provider loses, it
    ///         is the result the job creator gets instead, and its tag is kept on chain.
    function resolveMediation(Deal calldata deal, bool providerWins, bytes calldata resultCid) external {
        (bytes32 id, DealState memory s) = _load(deal, State.Challenged);
        _onlyParty(deal.mediator);
        if (block.timestamp > s.deadline) revert DeadlinePassed(id, s.deadline);
        if (resultCid.length > MAX_CID_LENGTH) revert InvalidCid(resultCid.length);
        uint48 now_ = uint48(block.timestamp);
        if (providerWins) {
            _deals[id] = DealState(State.Upheld, now_, s.resultTag);
        } else {
            _deals[id] = DealState(State.Refunded, now_, resultCid.length == 0 ? bytes24(0) : _tag(resultCid));
        }
        _credit(deal.mediator, deal.mediationFee);
        _credit(providerWins ? deal.provider : deal.jobCreator, uint256(deal.price) + deal.collateral);
        emit MediationResolved(id, deal.mediator, providerWins, resultCid);
    }

    /// @notice Anyone may end a deal whose result never came: the job creator gets its payment back
    ///         and the provider's collateral.
    function timeoutResult(Deal calldata deal) external {
        (bytes32 id, DealState memory s) = _load(deal, State.Created);
        if (block.timestamp <= s.deadline) revert DeadlineNotReached(id, s.deadline);
        _deals[id] = DealState(State.Refunded, uint48(block.timestamp), bytes24(0));
        _credit(deal.jobCreator, uint256(deal.price) + deal.collateral);
        emit DealTimedOut(id, Timeout.Result);
    }

    /// @notice Anyone may end a mediation the mediator never resolved: both parties are refunded.
    function timeoutMediation(Deal calldata deal) external {
        (bytes32 id, DealState memory s) = _load(deal, State.Challenged);
        if (block.timestamp <= s.deadline) revert DeadlineNotReached(id, s.deadline);
        _deals[id] = DealState(State.MediationExpired, uint48(block.timestamp), s.resultTag);
        _credit(deal.jobCreator, uint256(deal.price) + deal.mediationFee);
        _credit(deal.provider, deal.collateral);
        emit DealTimedOut(id, Timeout.Mediation);
    }

    // ------------------------------------------------------------------ views

    /// @notice The collateral a resource offer at `price` must carry.
    function requiredCollateral(uint96 price) public view returns (uint256 required) {
        required = uint256(price) * collateralMultiple;
        if (required < minCollateral) required = minCollateral;
    }

    /// @notice State, current deadline and result tag of a deal (State.None once deleted: accepted,
    ///         claimed, judged by timeout, or never created). For the final states the deadline is
    ///         when the deal ended.
    function dealState(bytes32 dealId) external view returns (State state, uint48 deadline, bytes24 tag) {
        DealState memory s = _deals[dealId];
        return (s.state, s.deadline, s.resultTag);
    }

    function hashDeal(Deal calldata deal) external pure returns (bytes32) {
        return keccak256(abi.encode(deal));
    }

    /// @notice `account`'s free balance (deposited and not escrowed).
    function balanceOf(address account) external view returns (uint256) {
        return _accounts[account].balance;
    }

    function nonceUsed(address signer, uint256 nonce) external view returns (bool) {
        Account memory account = _accounts[signer];
        uint256 word = nonce >> 7;
        uint256 bits = word == account.nonceWord ? account.nonceBits : _olderNonces[signer][word];
        return bits & (1 << (nonce & 127)) != 0;
    }

    /// @notice The EIP-712 digest a job creator signs for `offer`.
    function jobOfferDigest(JobOffer calldata offer) external view returns (bytes32) {
        return _hashTypedDataV4(_hashJobOffer(offer));
    }

    /// @notice The EIP-712 digest a provider signs for `offer`.
    function resourceOfferDigest(ResourceOffer calldata offer) external view returns (bytes32) {
        return _hashTypedDataV4(_hashResourceOffer(offer));
    }

    // ------------------------------------------------------------------ internals

    function _createDeal(
        JobOffer calldata jo,
        bytes calldata jobSig,
        ResourceOffer calldata ro,
        bytes calldata resourceSig
    ) internal returns (bytes32 id) {
        if (block.timestamp > jo.expiry) revert OfferExpired(jo.jobCreator, jo.nonce, jo.expiry);
        if (block.timestamp > ro.expiry) revert OfferExpired(ro.provider, ro.nonce, ro.expiry);
        if (ro.module != bytes32(0) && ro.module != jo.module) revert ModuleMismatch(jo.module, ro.module);
        _checkMachine(jo.machine, ro.machine);
        if (ro.price > jo.maxPrice) revert PriceAboveMaximum(ro.price, jo.maxPrice);
        if (jo.timeout < ro.minTimeout) revert TimeoutTooShort(jo.timeout, ro.minTimeout);
        uint256 required = requiredCollateral(ro.price);
        if (ro.collateral < required) revert CollateralTooLow(ro.collateral, required);
        if (jo.mediators.length > MAX_MEDIATORS) revert TooManyMediators(jo.mediators.length, MAX_MEDIATORS);
        if (ro.mediators.length > MAX_MEDIATORS) revert TooManyMediators(ro.mediators.length, MAX_MEDIATORS);
        (address mediator, uint96 fee) = _pickMediator(jo.mediators, ro.mediators);

        bytes32 joHash = _hashJobOffer(jo);
        bytes32 roHash = _hashResourceOffer(ro);
        _checkSignature(jo.jobCreator, _hashTypedDataV4(joHash), jobSig);
        _checkSignature(ro.provider, _hashTypedDataV4(roHash), resourceSig);
        if (jo.nonce == NO_NONCE) revert NonceUsed(jo.jobCreator, jo.nonce);
        if (ro.nonce == NO_NONCE) revert NonceUsed(ro.provider, ro.nonce);
        _useNonceAndDebit(jo.jobCreator, jo.nonce, ro.price);
        _useNonceAndDebit(ro.provider, ro.nonce, ro.collateral);

        Deal memory deal = Deal(jo.jobCreator, ro.provider, mediator, ro.price, ro.collateral, fee, joHash, roHash);
        id = keccak256(abi.encode(deal));
        uint48 deadline = uint48(block.timestamp + jo.timeout);
        _deals[id] = DealState(State.Created, deadline, bytes24(0));
        emit DealCreated(id, jo.jobCreator, ro.provider, deal, deadline);
    }

    function _submitResult(Deal calldata deal, bytes calldata resultCid) internal {
        (bytes32 id, DealState memory s) = _load(deal, State.Created);
        _onlyParty(deal.provider);
        if (block.timestamp > s.deadline) revert DeadlinePassed(id, s.deadline);
        if (resultCid.length == 0 || resultCid.length > MAX_CID_LENGTH) revert InvalidCid(resultCid.length);
        uint48 deadline = uint48(block.timestamp + challengeWindow);
        _deals[id] = DealState(State.Submitted, deadline, _tag(resultCid));
        emit ResultSubmitted(id, resultCid, deadline);
    }

    function _payProviderAfterWindow(Deal calldata deal) internal returns (bytes32 id) {
        DealState memory s;
        (id, s) = _load(deal, State.Submitted);
        if (block.timestamp <= s.deadline) revert DeadlineNotReached(id, s.deadline);
        delete _deals[id];
        _credit(deal.provider, uint256(deal.price) + deal.collateral);
    }

    function _load(Deal calldata deal, State expected) internal view returns (bytes32 id, DealState memory s) {
        id = keccak256(abi.encode(deal));
        s = _deals[id];
        if (s.state == State.None) revert UnknownDeal(id);
        if (s.state != expected) revert WrongState(id, s.state);
    }

    function _onlySolver() internal view {
        if (!isSolver[msg.sender]) revert NotSolver(msg.sender);
    }

    function _onlyParty(address expected) internal view {
        if (msg.sender != expected) revert NotParty(msg.sender, expected);
    }

    function _deposit(address account, address from, uint256 amount) internal {
        if (amount == 0) revert ZeroAmount();
        // Pull first: a balance is credited only for tokens that arrived.
        token.safeTransferFrom(from, address(this), amount);
        _credit(account, amount);
        emit Deposited(account, from, amount);
    }

    /// @dev Mark `nonce` used (unless NO_NONCE) and take `amount` from the free balance, in one
    ///      slot write when the nonce is in the account's current word. A nonce in a later word
    ///      makes that word current (the old word moves to `_olderNonces`); a nonce in an older
    ///      word, or beyond 24-bit words, is kept in `_olderNonces` directly. Every nonce is
    ///      usable once, in any order.
    function _useNonceAndDebit(address signer, uint256 nonce, uint256 amount) internal {
        Account memory account = _accounts[signer];
        if (nonce != NO_NONCE) {
            uint256 word = nonce >> 7;
            uint128 bit = uint128(1) << uint128(nonce & 127);
            if (word == account.nonceWord) {
                if (account.nonceBits & bit != 0) revert NonceUsed(signer, nonce);
                account.nonceBits |= bit;
            } else if (word > account.nonceWord && word <= type(uint24).max) {
                if (account.nonceBits != 0) _olderNonces[signer][account.nonceWord] = account.nonceBits;
                account.nonceWord = uint24(word);
                account.nonceBits = bit;
            } else {
                uint256 bits = _olderNonces[signer][word];
                if (bits & bit != 0) revert NonceUsed(signer, nonce);
                _olderNonces[signer][word] = bits | bit;
            }
        }
        if (account.balance < amount) revert InsufficientBalance(signer, account.balance, amount);
        unchecked {
            account.balance -= uint104(amount);
        }
        _accounts[signer] = account;
    }

    function _credit(address account, uint256 amount) internal {
        uint256 balance = _accounts[account].balance + amount;
        if (balance > type(uint104).max) revert BalanceOverflow(account, balance);
        _accounts[account].balance = uint104(balance);
    }

    /// @dev ECDSA first (the common case, no account access); ERC-1271 only for contract signers.
    function _checkSignature(address signer, bytes32 digest, bytes calldata sig) internal view {
        (address recovered, ECDSA.RecoverError err,) = ECDSA.tryRecover(digest, sig);
        if (err == ECDSA.RecoverError.NoError && recovered == signer) return;
        if (signer.code.length > 0 && SignatureChecker.isValidERC1271SignatureNow(signer, digest, sig)) return;
        revert BadSignature(signer);
    }

    /// @dev Every 32-bit lane of the offered machine must be at least the needed one.
    function _checkMachine(uint256 needed, uint256 offered) internal pure {
        for (uint256 lane; lane < 8; ++lane) {
            uint256 n = (needed >> (lane * 32)) & 0xffffffff;
            uint256 o = (offered >> (lane * 32)) & 0xffffffff;
            if (o < n) revert MachineMismatch(lane, n, o);
        }
    }

    /// @dev The first mediator of the job creator's list that the provider also names and that is
    ///      registered and active.
    function _pickMediator(address[] calldata theirs, address[] calldata ours)
        internal
        view
        returns (address, uint96)
    {
        for (uint256 i; i < theirs.length; ++i) {
            for (uint256 j; j < ours.length; ++j) {
                if (theirs[i] == ours[j]) {
                    MediatorInfo memory info = mediators[theirs[i]];
                    if (info.active) return (theirs[i], info.fee);
                    break;
                }
            }
        }
        revert NoMutualMediator();
    }

    function _hashJobOffer(JobOffer calldata o) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                JOB_OFFER_TYPEHASH,
                o.jobCreator,
                o.module,
                o.specHash,
                o.machine,
                o.maxPrice,
                o.timeout,
                keccak256(abi.encodePacked(o.mediators)),
                o.expiry,
                o.nonce
            )
        );
    }

    function _hashResourceOffer(ResourceOffer calldata o) internal pure returns (bytes32) {
        return keccak256(
            abi.encode(
                RESOURCE_OFFER_TYPEHASH,
                o.provider,
                o.module,
                o.machine,
                o.price,
                o.collateral,
                o.minTimeout,
                keccak256(abi.encodePacked(o.mediators)),
                o.expiry,
                o.nonce
            )
        );
    }

    /// @notice The tag a result CID is stored under (first 24 bytes of its keccak256).
    function resultTag(bytes calldata resultCid) external pure returns (bytes24) {
        return _tag(resultCid);
    }

    function _tag(bytes calldata resultCid) internal pure returns (bytes24) {
        return bytes24(keccak256(resultCid));
    }
}
